"""The scan behind ``avtool scan``: messages from mailbox.walk, scanned by a bounded pool of
threads on the Engine, then (when asked) infected ones moved to a quarantine Maildir.

Nothing here prints: every event goes to a Report, always on the calling thread, in the order
results arrive. Memory does not grow with the mailbox: the walk is a stream, at most twice
``jobs`` messages are in flight, and only infected messages are remembered (for moving).

How a message reaches clamd: a file (Maildir, MH, loose file) is opened and passed by
descriptor, as the daemon does. An mbox message is a byte range of a bigger file: it is copied
by the kernel (sendfile) into an anonymous memory file (memfd_create(2)), which is passed the
same way; bench/scan.py measured this against INSTREAM of the range (see its output).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO, Literal, Protocol

from avtool.config import Config
from avtool.config import keys as K
from avtool.courier import unscannable
from avtool.engine import Clean, Engine, Failed, Infected, Unchecked, Verdict, secondlook
from avtool.engine.engine import kept_sessions
from avtool.errors import EngineError, UsageError
from avtool.safedir import Unsafe
from avtool.scan.explain import Part, explain
from avtool.scan.mailbox import STDIN, Message, Moved, OpenFile, Problem, move, open_quarantine
from avtool.scan.mailbox import spool as spool_stdin
from avtool.scan.mailbox import walk as walk_inputs
from avtool.scan.mailbox.maildir import Maildir, copy_range, relocate
from avtool.scan.mailbox.mbox import digest
from avtool.scan.mailbox.message import read_head, sender_and_subject
from avtool.scan.mailbox.opener import Opener
from avtool.scan.mailbox.walk import why

log = logging.getLogger("avtool.scan")

Status = Literal["clean", "infected", "unchecked", "failed"]
UNSCANNABLE_HEAD = 1 << 16
_THREADS = re.compile(r"^THREADS:.*\bmax (\d+)", re.M)  # clamd STATS: "THREADS: live 1 ... max 12"


class ClamdUnreachable(EngineError):
    """No clamd answered before the scan: exit 2, as clamdscan does when it cannot connect."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Result:
    message: Message
    verdict: Verdict
    sender: str | None = None
    subject: str | None = None
    parts: tuple[Part, ...] | None = None  # --explain, infected messages only
    digest: str = ""  # mbox messages to move: SHA-256 of the bytes scanned

    @property
    def status(self) -> Status:
        v = self.verdict
        if isinstance(v, Clean):
            return "clean"
        if isinstance(v, Infected):
            return "infected"
        return "unchecked" if isinstance(v, Unchecked) else "failed"


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


@dataclass(frozen=True)
class Options:
    jobs: int = 0  # 0: scan.jobs, and if that is 0 too, default_jobs()
    explain: bool = False
    move_to: str | None = None
    count: bool = False  # count messages and bytes first, in the background (a progress total)
    headers: bool = False  # From and Subject for clean messages too (non-clean ones always)


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

        counter = _Counter(paths, spooled, exclude) if options.count else None
        started = time.monotonic()
        items = walk_inputs(paths, stdin=spooled, exclude=exclude)
        scan_all(items, jobs, worker, record, counter, report)
        summary.seconds = time.monotonic() - started
        if counter is not None:
            counter.stop.set()
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


def scan_all(
    items: Iterable[Message | Problem],
    jobs: int,
    worker: Worker,
    record: Record,
    counter: _Counter | None = None,
    report: Report | None = None,
) -> None:
    """Scan ``items`` (a walk, pulled on this thread) with at most ``2 * jobs`` messages in
    flight (the walk runs ahead only that far), handing each result and problem to ``record``
    on this thread as it completes. ``counter`` tells ``report`` the total once it is known."""
    done: queue.SimpleQueue[Future[Result | Problem]] = queue.SimpleQueue()
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="avtool-scan")
    in_flight = 0
    told_total = False

    def collect(block: bool) -> None:
        nonlocal in_flight, told_total
        while in_flight and (block or not done.empty()):
            record(done.get().result())
            in_flight -= 1
            block = False
        if counter and report and not told_total and counter.finished.is_set():
            told_total = True
            report.total(*counter.counts)

    with kept_sessions(worker.engine, worker.range_engine):  # one IDSESSION per thread
        try:
            for item in items:
                if isinstance(item, Problem):
                    record(item)
                    continue
                while in_flight >= 2 * jobs:
                    collect(block=True)
                future = pool.submit(worker.scan, item)
                future.add_done_callback(done.put)
                in_flight += 1
                collect(block=False)
            while in_flight:
                collect(block=True)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            if counter is not None:
                counter.stop.set()
            raise
        pool.shutdown()


class Record(Protocol):
    def __call__(self, item: Result | Problem) -> None: ...


class _Counter:
    """Counts messages and bytes in a background thread, for a progress bar's total (it reads
    directories and mbox files a second time; the page cache makes that cheap)."""

    def __init__(
        self, paths: Sequence[str], spooled: OpenFile | None, exclude: set[tuple[int, int]]
    ) -> None:
        self.counts = (0, 0)
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


class Worker:
    """Scans one message (on a pool thread): verdict, then what a report needs of it."""

    def __init__(self, cfg: Config, engine: Engine, options: Options, *, moving: bool) -> None:
        self.engine = engine
        self.opener = Opener()  # Maildir and MH messages by their folders' descriptors
        # transfer "scan" needs a path clamd can open; a byte range has none, so ranges go by
        # FILDES (INSTREAM over TCP) whatever clamd.transfer says.
        self.range_engine = (
            engine
            if engine.transfer != "scan"
            else Engine.from_config(cfg.override(K.TRANSFER, "auto"))
        )
        self.explain = options.explain
        self.headers = options.headers
        self.moving = moving

    def scan(self, m: Message) -> Result | Problem:
        try:
            return self._scan(m)
        except OSError as e:
            return Result(m, Failed(f"cannot read the message: {why(e)}"))
        except Exception as e:  # a bug: one Failed line and exit 2, never a lost message
            log.debug("scanning %s", m.where, exc_info=True)
            return Result(m, Failed(f"internal error: {type(e).__name__}: {e}"))

    def _scan(self, m: Message) -> Result | Problem:
        if m.source is not None:
            return self._examine(m, m.source.fd, m.offset)
        # Through safedir: the mailbox's owner may swap a folder for a link (to /dev, where an
        # open alone has effects) between the listing and this open. O_NONBLOCK: a message
        # swapped for a fifo must not hang the scan in open(2) (fifo(7)).
        try:
            try:
                fd = self.opener.open(m)
            except FileNotFoundError:
                again = relocate(m) if m.format == "maildir" else None
                if again is None:
                    text = "gone before it was scanned (deleted meanwhile)"
                    return Problem(m.where, text, False)
                m = again
                fd = self.opener.open(m)
        except OSError as e:
            return Result(m, Failed(f"cannot open: {why(e)}"))
        except Unsafe as e:
            return Result(m, Failed(f"not opened: {e}"))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return Result(m, Failed("not a regular file any more (replaced meanwhile)"))
            # What a move may act on: this inode, the one scanned (quarantine.py).
            if (m.dev, m.ino) != (st.st_dev, st.st_ino):  # replace() costs 25 us a message
                m = replace(m, dev=st.st_dev, ino=st.st_ino)
            return self._examine(m, fd, 0)
        finally:
            os.close(fd)

    def _examine(self, m: Message, fd: int, base: int) -> Result:
        verdict = self._verdict(m, fd, base)
        if isinstance(verdict, Clean):
            # clamd answers OK without looking at some messages (courier/unscannable.py)
            with contextlib.suppress(OSError):
                head = os.pread(fd, min(m.size, UNSCANNABLE_HEAD), base)
                unseen = unscannable.find(fd, m.size, head, base)
                if unseen is not None:
                    verdict = Unchecked(unseen, verdict.backend)
        sender = subject = None
        if self.headers or not isinstance(verdict, Clean):
            # On a read error the verdict stands; the report just lacks the fields.
            with contextlib.suppress(OSError):
                sender, subject = sender_and_subject(read_head(fd, base, m.size))
        parts = None
        mark = ""
        if isinstance(verdict, Infected):
            if self.explain:
                parts = explain(_pread_all(fd, base, m.size), self.scan_bytes)
            if self.moving and m.format == "mbox":
                mark = digest(fd, base, m.size)
        return Result(m, verdict, sender, subject, parts, mark)

    def _verdict(self, m: Message, fd: int, base: int) -> Verdict:
        if m.source is None:
            return self.engine.scan(fd, path=m.path)
        if base == 0 and m.size == os.fstat(fd).st_size:
            return self.range_engine.scan(fd)  # stdin holding one message: the spool itself
        if m.size > self.engine.max_size:  # do not copy what clamd will not be sent
            return Unchecked(f"too large: {m.size} bytes > scan.max_size {self.engine.max_size}")
        mem = os.memfd_create("avtool-message", os.MFD_CLOEXEC)
        try:
            copy_range(fd, mem, base, m.size)
            return self.range_engine.scan(mem)
        finally:
            os.close(mem)

    def scan_bytes(self, data: bytes) -> Verdict:
        """One decoded MIME part, for --explain."""
        return secondlook.scan_bytes(self.range_engine, data)


def _pread_all(fd: int, offset: int, size: int) -> bytes:
    chunks = []
    end = offset + size
    while offset < end:
        data = os.pread(fd, end - offset, offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
    return b"".join(chunks)


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
    their sum), at most twice the CPU count: more would only queue in clamd (clamd.conf(5),
    MaxQueue) or fight it for the CPUs. bench/scan.py measures the choice."""
    cpus = os.cpu_count() or 1
    threads = clamd_threads(engine)
    return max(1, min(threads or 2 * cpus, 2 * cpus))


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
    "Record",
    "Report",
    "Result",
    "Summary",
    "Worker",
    "default_jobs",
    "preflight",
    "run",
    "scan_all",
]
