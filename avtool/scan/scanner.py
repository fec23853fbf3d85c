"""The scan behind ``avtool scan``: messages from mailbox.walk, scanned (worker.py, by one of
driver.py's two drivers) on the Engine, then (when asked) infected ones moved to a quarantine
Maildir.

Nothing here prints: every event goes to a Report, always on the calling thread, in the order
results arrive. Memory does not grow with the mailbox: the walk is a stream, at most twice
``jobs`` messages are in flight, and only infected messages are remembered (for moving).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO, Protocol

from avtool.config import Config
from avtool.config import keys as K
from avtool.engine import Engine, Infected
from avtool.errors import EngineError, UsageError
from avtool.safedir import Unsafe
from avtool.scan.driver import scan_all
from avtool.scan.mailbox import STDIN, Message, Moved, OpenFile, Problem, move, open_quarantine
from avtool.scan.mailbox import spool as spool_stdin
from avtool.scan.mailbox import walk as walk_inputs
from avtool.scan.mailbox.maildir import Maildir
from avtool.scan.mailbox.walk import why
from avtool.scan.worker import Options, Result, Worker

_THREADS = re.compile(r"^THREADS:.*\bmax (\d+)", re.M)  # clamd STATS: "THREADS: live 1 ... max 12"


class ClamdUnreachable(EngineError):
    """No clamd answered before the scan: exit 2, as clamdscan does when it cannot connect."""

    exit_code = 2


@dataclass
class Summary:
    jobs: int = 0
    scanned: int = 0
    clean: int = 0
    infected: int = 0
    unchecked: int = 0
    failed: int = 0
    errors: int = 0  # input problems and failed moves
    notes: int = 0  # problems that leave the exit status alone
    moved: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.scanned / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """clamdscan's: 0 all clean, 1 something infected, 2 errors (they win over infected)."""
        if self.errors or self.failed:
            return 2
        return 1 if self.infected else 0

    def add(self, result: Result) -> None:
        self.scanned += 1
        self.bytes += result.message.size
        status = result.status
        setattr(self, status, getattr(self, status) + 1)

    def note(self, problem: Problem) -> None:
        if problem.error:
            self.errors += 1
        else:
            self.notes += 1


class Report(Protocol):
    """Receives the scan's events (on the thread that called run())."""

    def total(self, messages: int, size: int) -> None: ...

    def result(self, result: Result) -> None: ...

    def problem(self, problem: Problem) -> None: ...

    def moved(self, moved: Moved) -> None: ...


def run(
    cfg: Config,
    paths: Sequence[str],
    report: Report,
    *,
    options: Options = Options(),  # noqa: B008 - frozen, never mutated
    stdin: BinaryIO | None = None,
) -> Summary:
    """Scan every message under ``paths`` and report it; move infected ones if asked."""
    if list(paths).count(STDIN) > 1:
        raise UsageError("'-' (standard input) can be given once")
    engine = Engine.from_config(cfg)
    preflight(engine)
    jobs = options.jobs or cfg[K.JOBS] or default_jobs(engine)
    dest, exclude = _quarantine(options.move_to)
    with contextlib.ExitStack() as cleanup:
        if dest is not None:
            cleanup.callback(dest.close)
        spooled = spool_stdin(stdin) if STDIN in paths and stdin is not None else None
        summary = Summary(jobs=jobs)
        worker = Worker(cfg, engine, options, moving=dest is not None)
        cleanup.callback(worker.close)
        victims: list[tuple[Message, str]] = []

        def record(item: Result | Problem) -> None:
            if isinstance(item, Problem):
                summary.note(item)
                report.problem(item)
                return
            summary.add(item)
            report.result(item)
            if dest is not None and isinstance(item.verdict, Infected):
                # No open mbox descriptor may outlive the scan: closing any descriptor of a file
                # drops this process's fcntl locks on it (fcntl(2)), which the move then takes.
                victims.append((replace(item.message, source=None), item.digest))

        counter = _Counter(paths, spooled, exclude, report) if options.count else None
        started = time.monotonic()
        items = walk_inputs(paths, stdin=spooled, exclude=exclude)
        try:
            scan_all(items, jobs, worker, record, counter.tell if counter else None)
        finally:
            if counter is not None:
                counter.stop.set()
        summary.seconds = time.monotonic() - started
        if counter is not None:
            counter.thread.join()
        if dest is not None and victims:
            for event in move(dest, victims, lock_timeout=cfg[K.LOCK_TIMEOUT]):
                if isinstance(event, Problem):
                    summary.note(event)
                    report.problem(event)
                else:
                    summary.moved += 1
                    report.moved(event)
        return summary


class _Counter:
    """Counts messages and bytes in a background thread, for a progress bar's total (it reads
    directories and mbox files a second time; the page cache makes that cheap)."""

    def __init__(
        self,
        paths: Sequence[str],
        spooled: OpenFile | None,
        exclude: set[tuple[int, int]],
        report: Report,
    ) -> None:
        self.counts = (0, 0)
        self.report = report
        self.told = False
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.thread = threading.Thread(
            target=self._count, args=(paths, spooled, exclude), name="avtool-count", daemon=True
        )
        self.thread.start()

    def _count(
        self, paths: Sequence[str], spooled: OpenFile | None, exclude: set[tuple[int, int]]
    ) -> None:
        messages = size = 0
        for item in walk_inputs(paths, stdin=spooled, exclude=exclude, stop=self.stop):
            if isinstance(item, Message):
                messages += 1
                size += item.size
        if not self.stop.is_set():
            self.counts = (messages, size)
            self.finished.set()

    def tell(self) -> None:
        """After each result, on the scan's thread: the report learns the total once known."""
        if not self.told and self.finished.is_set():
            self.told = True
            self.report.total(*self.counts)


def _quarantine(path: str | None) -> tuple[Maildir | None, set[tuple[int, int]]]:
    """The quarantine Maildir (checked before anything is scanned) and what not to walk into:
    the quarantine itself, or a rescan would find the messages it holds and move them again.

    Refused when another user could write it or replace a directory on its path (the rule of
    the pid file, safedir.py): root moves mail there."""
    if path is None:
        return None, set()
    try:
        dest = open_quarantine(path)
    except OSError as e:
        raise UsageError(f"--move-to {path}: {why(e)}") from None
    except Unsafe as e:
        raise UsageError(f"--move-to {path}: refused: {e}") from None
    st = os.fstat(dest.fd)
    return dest, {(st.st_dev, st.st_ino)}


def default_jobs(engine: Engine) -> int:
    """clamd's MaxThreads (from STATS: with balance ordered the first backend's, round-robin
    their sum), as its own MULTISCAN uses, up to a bound per CPU: beyond it messages would only
    queue in clamd (clamd.conf(5), MaxQueue). The bound is 4 per CPU for the loop (driver.py),
    which costs nothing per message at clamd: with 2 per CPU clamd's threads sometimes ran out
    of work (1.82-1.87 of 2 CPUs busy against MULTISCAN's 1.90, bench/rescan.py); 2 per CPU
    for the pool, whose threads fight clamd for the CPUs."""
    cpus = os.cpu_count() or 1
    bound = (4 if engine.fildes_only else 2) * cpus
    return max(1, min(clamd_threads(engine) or 2 * cpus, bound))


def clamd_threads(engine: Engine) -> int:
    total = 0
    for backend in engine.backends:
        try:
            found = _THREADS.search(backend.stats())
        except EngineError:
            continue
        if found is None:
            continue
        if engine.balance == "ordered":
            return int(found.group(1))
        total += int(found.group(1))
    return total


def preflight(engine: Engine) -> None:
    """One PING per backend before any scan: with no clamd the scan would only print a
    failure per message."""
    reasons = []
    for backend in engine.backends:
        try:
            backend.ping()
            return
        except EngineError as e:
            reasons.append(f"{backend.address}: {e}")
    raise ClamdUnreachable("cannot scan: no clamd answers: " + "; ".join(reasons))


__all__ = [
    "ClamdUnreachable",
    "Options",
    "Report",
    "Result",
    "Summary",
    "default_jobs",
    "preflight",
    "run",
]  # Options, Result: worker.py
