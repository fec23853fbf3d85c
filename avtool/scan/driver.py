"""The two drivers of a scan's messages (``avtool scan``, ``rescan``), as the daemon has two:

- the loop, when every clamd takes FILDES on a unix socket (the usual local clamd): one thread
  opens each message, sends it on a kept clamd session (engine/pending.py, the daemon's own
  non-blocking driver of the failover machine) and waits for the replies with poll(2);
- a pool of threads, each blocking in ``Engine.scan`` on its own kept session, when some clamd
  is reached over TCP (INSTREAM, the message goes through avtool) or by path (SCAN).

Both pull the walk on the calling thread, keep at most ``jobs`` messages at clamd (the pool:
twice that in flight, its queue) and hand each result and problem to ``record`` on that thread
as it completes. The loop exists for the CPU: on a 2-core machine every millisecond avtool
spends is one clamd does not get (issue 18: a rescan must keep up with clamd's own MULTISCAN),
and the pool spent a third of its CPU handing messages between threads (futures, queues,
wake-ups and the GIL; bench/rescan.py measures both).
"""

from __future__ import annotations

import math
import queue
import select
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from avtool.engine import Verdict
from avtool.engine.engine import kept_sessions
from avtool.engine.pending import PendingScan
from avtool.scan.mailbox import Message, Problem
from avtool.scan.worker import Opened, Result, Worker


class Record(Protocol):
    def __call__(self, item: Result | Problem) -> None: ...


def scan_all(
    items: Iterable[Message | Problem],
    jobs: int,
    worker: Worker,
    record: Record,
    progress: Callable[[], None] | None = None,
) -> None:
    """Scan ``items`` (a walk, pulled on this thread), ``record`` each result and problem on
    this thread; ``progress`` is called after each."""
    if worker.looped:
        _Loop(worker, jobs, record, progress).run(items)
    else:
        _pool(items, jobs, worker, record, progress)


class _Job:
    __slots__ = ("opened", "scan")

    def __init__(self, opened: Opened, scan: PendingScan) -> None:
        self.opened = opened
        self.scan = scan


class _Loop:
    """One thread, at most ``jobs`` messages at clamd, each on its own session."""

    def __init__(
        self, worker: Worker, jobs: int, record: Record, progress: Callable[[], None] | None
    ) -> None:
        self.worker = worker
        self.jobs = jobs
        self.record = record
        self.progress = progress
        self.poller = select.poll()
        self.waiting: dict[int, _Job] = {}  # session fd -> the scan waiting for its reply
        self.ready: deque[tuple[Opened, Verdict]] = deque()  # answered, not yet examined

    def run(self, items: Iterable[Message | Problem]) -> None:
        """Each turn: fill clamd up to ``jobs`` again, then deal with the messages it answered
        (its threads go on with the rest meanwhile), then wait for the next replies."""
        walk = iter(items)
        more = True
        try:
            while True:
                while more and len(self.waiting) < self.jobs and len(self.ready) <= self.jobs:
                    item = next(walk, None)
                    if item is None:
                        more = False
                    elif isinstance(item, Problem):
                        self._done(item)
                    else:
                        self._start(item)
                while self.ready:
                    self._finish(*self.ready.popleft())
                if not self.waiting:
                    if more:
                        continue
                    return
                self._wait()
        finally:
            for job in self.waiting.values():
                job.scan.abandon()
                job.opened.close()
            self.waiting.clear()
            for opened, _ in self.ready:
                opened.close()
            for backend in self.worker.engine.backends:
                backend.sessions.close()

    def _start(self, m: Message) -> None:
        worker = self.worker
        opened = worker.guard(m, lambda: worker.open(m))
        if not isinstance(opened, Opened):
            self._done(opened)
            return
        sent = worker.guard(opened.message, lambda: worker.payload(opened))
        if isinstance(sent, Result):
            opened.close()
            self._done(sent)
        elif isinstance(sent, int):
            now = time.monotonic()
            scan = PendingScan(worker.engine, sent, None, now)
            self._step(_Job(opened, scan), scan.start(now))
        else:
            self.ready.append((opened, sent))

    def _step(self, job: _Job, verdict: Verdict | None) -> None:
        """Where the scan stands: waiting on a session (maybe a new one), or done."""
        if verdict is None:
            session = job.scan.session
            assert session is not None  # noqa: S101 - PendingScan: None means it waits
            self.waiting[session.fd] = job
            self.poller.register(session.fd, select.POLLIN)
        else:
            self.ready.append((job.opened, verdict))

    def _finish(self, opened: Opened, verdict: Verdict) -> None:
        worker = self.worker
        try:
            result = worker.guard(opened.message, lambda: worker.examine(opened, verdict))
        finally:
            opened.close()
        self._done(result)

    def _wait(self) -> None:
        """Wait for replies; each attempt ends by its ``attempt_until``. The first job in
        ``waiting`` ends first: every attempt lasts clamd.scan_timeout (no deadline here) and
        is added when it starts, with a ``now`` no earlier than the last one's."""
        waiting = self.waiting
        first = next(iter(waiting.values())).scan.attempt_until
        events = self.poller.poll(max(0, math.ceil((first - time.monotonic()) * 1000)))
        now = time.monotonic()
        for fd, _ in events:
            job = waiting.pop(fd)
            self.poller.unregister(fd)
            self._step(job, job.scan.receive(now))
        while first <= now and waiting:
            fd, job = next(iter(waiting.items()))
            first = job.scan.attempt_until
            if first <= now:
                del waiting[fd]
                self.poller.unregister(fd)
                self._step(job, job.scan.timeout(now))

    def _done(self, item: Result | Problem) -> None:
        self.record(item)
        if self.progress is not None:
            self.progress()


def _pool(
    items: Iterable[Message | Problem],
    jobs: int,
    worker: Worker,
    record: Record,
    progress: Callable[[], None] | None,
) -> None:
    """``jobs`` threads, at most ``2 * jobs`` messages in flight (the walk runs ahead only
    that far), each thread on its own kept session (Engine.kept_sessions)."""
    done: queue.SimpleQueue[Future[Result | Problem]] = queue.SimpleQueue()
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="avtool-scan")
    in_flight = 0

    def collect(block: bool) -> None:
        nonlocal in_flight
        while in_flight and (block or not done.empty()):
            record(done.get().result())
            in_flight -= 1
            block = False
            if progress is not None:
                progress()

    with kept_sessions(worker.engine, worker.range_engine):
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
            raise
        pool.shutdown()
