"""Live counters of the daemon, read by ``avtool sig stats``. Updated by the connection threads."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING

from avtool.engine.verdict import Clean, Failed, Infected, Unchecked

if TYPE_CHECKING:
    from avtool.daemon.pipeline import Outcome

VERDICTS = ("clean", "infected", "unchecked", "failed", "exempt")
ACTIONS = ("accept", "pass", "reject", "drop", "quarantine", "defer")


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.scan_ms: deque[float] = deque(maxlen=10_000)  # recent scans, for p50/p99
        self.lock = threading.Lock()

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        self.counts["messages"] += 1
        v = outcome.verdict
        if isinstance(v, Clean):
            self.counts["clean"] += 1
        elif isinstance(v, Infected):
            self.counts["infected"] += 1
        elif isinstance(v, Unchecked):
            self.counts["unchecked"] += 1
        elif isinstance(v, Failed):
            self.counts["failed"] += 1
        elif outcome.decision is not None:
            self.counts["exempt"] += 1
        else:
            self.counts["errors"] += 1  # bad request or control file: answered without a scan
        if outcome.decision is not None:
            self.counts[outcome.decision.action] += 1
        if outcome.reply.code >= 400 and outcome.reply.code < 500:
            self.counts["deferred"] += 1
        if v is not None:
            self.scan_ms.append(outcome.scan_ms)

    def count_timeout(self) -> None:
        with self.lock:
            self._count_timeout()

    def _count_timeout(self) -> None:
        self.counts["messages"] += 1
        self.counts["deferred"] += 1
        self.counts["timeouts"] += 1

    def percentile(self, q: float) -> float | None:
        if not self.scan_ms:
            return None
        ordered = sorted(self.scan_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def snapshot(self) -> dict[str, float | int | None]:
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, float | int | None]:
        names = ("messages", *VERDICTS, *ACTIONS, "deferred", "timeouts", "errors")
        data: dict[str, float | int | None] = {n: self.counts[n] for n in names}
        data["p50_ms"] = self.percentile(0.50)
        data["p99_ms"] = self.percentile(0.99)
        data["uptime_s"] = round(time.monotonic() - self.started, 1)
        return data
