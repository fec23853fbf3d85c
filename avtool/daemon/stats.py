"""Live counters of the daemon, read by ``avtool sig stats``. Updated by the connection threads.

Their names and types, and the answer's lines, are control/wire.py's (``COUNTERS``, ``Stats``):
the client parses them with the same definitions.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from avtool.control import wire
from avtool.engine.verdict import Clean, Failed, Infected, Unchecked

if TYPE_CHECKING:
    from avtool.daemon.pipeline import Outcome
    from avtool.engine import Backend


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

    def snapshot(self) -> dict[str, wire.Value]:
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, wire.Value]:
        """Every counter of wire.COUNTERS, in its order."""
        data: dict[str, wire.Value] = {
            name: self.counts[name] for name, kind in wire.COUNTERS.items() if kind is int
        }
        data["p50_ms"] = self.percentile(0.50)
        data["p99_ms"] = self.percentile(0.99)
        data["uptime_s"] = round(time.monotonic() - self.started, 1)
        return data

    def answer(self, socket: Path | None, backends: Iterable[Backend]) -> wire.Stats:
        """What ``avtool sig stats`` gets: this process, its socket, the counters and each
        clamd (Reloader.answer_stats writes ``lines()`` of it)."""
        clamds = [_backend(b) for b in backends]
        named = None if socket is None else str(socket)
        return wire.Stats(os.getpid(), named, self.snapshot(), clamds)


def _backend(backend: Backend) -> wire.Backend:
    info = backend.describe()
    return wire.Backend(
        address=backend.address,
        reachable=info.reachable,
        scans=backend.scans,
        errors=backend.errors,
        db=info.db_version,
        version=info.version,
        in_flight=backend.in_flight,
        aside=backend.set_aside(),
    )
