"""The daemon's event loop: one thread, epoll, every connection and every scan in flight.

Per message (courierfilter(8): a connection per message, the request, one reply): accept,
read the request, ``Pipeline.prepare`` (paths, envelope, the data file opened), the scan
(engine/pending.py: FILDES on kept-open clamd sessions, failover), and when clamd answers,
``judge``, ``complete``, the reply and the log line. Nothing here blocks on the network: a
client that sends its request slowly or not at all costs a dict entry and a timer, not a
thread, and a scan waits in epoll, not in a thread. Local file work (lstat, the control
files, a header peek) is done in place; completing a decision that writes files (quarantine,
drop marks, header fields: fsync) goes to a worker thread, and so does every message when
some clamd is reached over TCP (INSTREAM, or transfer ``scan``): those run
``Pipeline.handle`` as batch-test does.

Why: on a 2-core machine every millisecond the filter spends is taken from clamd. A thread per
connection paid a thread switch and the GIL hand-over twice per message, a connect and a close
to clamd, and a socket timeout (an ioctl and a poll) around every call. In the same run
(bench/serve.py --baseline 9846bb7, 500 messages, 1 client) the daemon's CPU per message fell
from 0.50-0.58 to 0.40-0.50 ms; the rest is mostly the kernel's and the interpreter's, cold
after each wait for clamd (README, Performance).

Limits: ``serve.max_scans`` scans at once (slots.py, shared with the workers; more wait in a
FIFO within their ``message_timeout``, then 432), ``serve.read_timeout`` for a whole request,
at most ``max_connections`` + SLOW_LIMIT connections held or queued for the workers
(workers.py; then the loop stops accepting and the kernel's backlog holds the rest).

The loop knows no server: it gets the listener, where to find the current pipeline (a reload
swaps it), the stats, the slots, its limits, the wake pipe and a clock (server.py wires them).
A connection still sending is a ``Reader``; once its request is read and prepared, a ``Conn``
(WAITING for a slot, SCANNING, JUDGING, DONE once answered or handed to a worker).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from avtool.config import keys as K
from avtool.courier.protocol import Request
from avtool.daemon import policy
from avtool.daemon.conns import DONE, JUDGING, SCANNING, WAITING, Conn, Reader
from avtool.daemon.intake import Intake, Source
from avtool.daemon.pipeline import Judged, Outcome, Pipeline, Prepared
from avtool.daemon.slots import Slots, busy
from avtool.daemon.stats import Stats
from avtool.daemon.workers import INTERNAL_ERROR, answer, send_reply
from avtool.engine import Engine
from avtool.engine.pending import PendingScan
from avtool.engine.session import Session
from avtool.engine.verdict import Verdict

log = logging.getLogger("avtool")
EXPIRE_EVERY = 5.0  # seconds between closing clamd sessions idle too long
_IN = select.EPOLLIN
_DONTWAIT = socket.MSG_DONTWAIT


class Loop(Intake):
    """Serves ``listener`` until ``stopping`` is set, then drains."""

    def __init__(
        self,
        listener: socket.socket,
        source: Source,
        stats: Stats,
        slots: Slots,
        *,
        readers: int,
        wake: tuple[int, int],
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            listener, source, readers=readers, wake=wake, stopping=stopping, clock=clock
        )
        self.stats = stats
        self.slots = slots
        self.scans: dict[int, Conn] = {}  # clamd session fd -> connection being scanned
        # Idle sessions stay registered with epoll (no register/unregister per scan); an
        # event on one is clamd closing it.
        self.resting: dict[int, Session] = {}
        self.waiting: deque[Conn] = deque()  # for a scan slot
        self.starting = False  # inside _next_waiting
        slots.on_free = self._wake_if_waiting
        self.engines: list[Engine] = []  # engines whose sessions this loop opened

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, watch_stdin: bool) -> None:
        self.listener.setblocking(False)
        self._accepting(True)
        self.ep.register(self.wake_r, _IN)
        if watch_stdin:
            self.ep.register(0, _IN)
        expire_at = self.clock() + EXPIRE_EVERY
        drain_until: float | None = None
        while True:
            now = self.clock()
            if drain_until is None and self.stopping.is_set():
                drain_until = now + self.source.pipeline.cfg[K.DRAIN_TIMEOUT]
                self._refuse()
            if drain_until is not None:
                if self.idle():
                    break
                if now >= drain_until:
                    log.warning("drain deadline passed with %d message(s) in flight", self.busy())
                    break
            self._dispatch(self.ep.poll(self._wait(now, drain_until)))
            now = self.clock()
            self._run_timers(now)
            if self.resume_at is not None and now >= self.resume_at:
                self.resume_at = None
                self._resume()
            if now >= expire_at:
                expire_at = now + EXPIRE_EVERY
                self._expire_sessions(now)
        self._close_sessions()
        self.workers.stop(drain_until or self.clock())
        self.ep.close()

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        lfd = self.listener.fileno()
        reading, scans = self.reading, self.scans
        for fd, _ in events:
            if fd == lfd:
                self._accept()
            elif (conn := scans.get(fd)) is not None:
                self._guarded(self._on_reply, conn)
            elif (reader := reading.get(fd)) is not None:
                self._guarded(self._read, reader)
            elif fd == self.wake_r:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    os.read(self.wake_r, 512)
                self._resume()  # a signal, or a worker done while the loop was full
                self._next_waiting()  # or a slot a worker gave back
            elif fd == 0:
                self._on_stdin()
            elif (idle := self.resting.pop(fd, None)) is not None and idle.pool:
                idle.pool.discard(idle)  # ended by clamd (its ReadTimeout)

    def busy(self) -> int:
        return len(self.scans) + len(self.waiting) + self.workers.pending

    def idle(self) -> bool:
        return not self.scans and not self.waiting and not self.workers.pending

    def _wait(self, now: float, drain_until: float | None) -> float:
        """Seconds epoll may sleep: until the next timer; during the drain, briefly (workers
        finish without telling the loop); with idle clamd sessions, until they are checked."""
        wait = self.timers.next_in(now)
        if self.resume_at is not None:
            until = max(0.0, self.resume_at - now)
            wait = until if wait < 0 else min(wait, until)
        if drain_until is not None:
            wait = 0.05 if wait < 0 else min(wait, 0.05)
        elif self.resting:  # wake up to close sessions idle too long, even with no mail
            wait = EXPIRE_EVERY if wait < 0 else min(wait, EXPIRE_EVERY)
        return wait

    def _run_timers(self, now: float) -> None:
        for conn in self.timers.due(now):
            if isinstance(conn, Reader):
                self._guarded(self._read_timeout, conn)
            elif conn.state == WAITING:
                self._guarded(self._slot_timeout, conn)
            elif conn.state == SCANNING:
                self._guarded(self._scan_timeout, conn)

    def _abort(self, conn: Reader | Conn) -> None:
        """Let go of everything ``conn`` holds, answer 432 and close (after a bug)."""
        with contextlib.suppress(Exception):
            if isinstance(conn, Conn) and conn.state != DONE:  # DONE: a worker holds its files
                if conn.scan is not None:
                    session = conn.scan.session
                    conn.scan.abandon()
                    self._follow(conn, session)
                if conn in self.waiting:
                    self.waiting.remove(conn)
                conn.prepared.close()
                if conn.state == SCANNING:
                    conn.state = JUDGING
                    self.slots.release(wake=False)
        super()._abort(conn)
        with contextlib.suppress(Exception):
            self._next_waiting()

    def _wake_if_waiting(self) -> None:
        """In a worker that gave a scan slot back: wake the loop if messages wait for one."""
        if self.waiting:
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"s")

    # ---- one message ------------------------------------------------------------------------
    def _start(self, reader: Reader, request: Request) -> None:
        pipeline = self.source.pipeline  # this message keeps it through a reload
        engine = pipeline.engine
        if not engine.fildes_only:
            # Some clamd is reached over TCP (INSTREAM) or by path: the blocking way, in a worker.
            sock, until, slots, stats = reader.sock, reader.deadline, self.slots, self.stats
            self._hand_over(sock, lambda: answer(sock, request, until, pipeline, slots, stats))
            return
        if engine not in self.engines:
            self.engines.append(engine)
        try:
            prepared = pipeline.prepare(request)
        except Exception as e:  # noqa: BLE001 - a bug must defer the mail, never accept it
            prepared = pipeline.internal_error(request, e)
        if isinstance(prepared, Outcome):
            self._conclude(pipeline, request, pipeline.cfg[K.DRY_RUN], prepared)
            self._reply(reader, prepared.reply)
            return
        p = prepared.prepared if isinstance(prepared, Judged) else prepared
        # From here the Conn holds the connection: a bug is its to clean up (a slot, files).
        self._guarded(functools.partial(self._begin, prepared), Conn(reader, request, pipeline, p))

    def _begin(self, prepared: Prepared | Judged, conn: Conn) -> None:
        engine = conn.pipeline.engine
        if isinstance(prepared, Judged):  # exempt, but its header needs work
            self._carry_out(conn, prepared)
        elif prepared.size > engine.max_size:
            self._judge(conn, engine.too_large(prepared.size))
        elif not self.waiting and self.slots.try_take():
            self._scan(conn)
        else:
            conn.state = WAITING
            self.waiting.append(conn)
            self._timer(conn, conn.deadline)

    def _slot_timeout(self, conn: Conn) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(conn)
        conn.prepared.close()
        self._reply(conn, busy(self.stats, conn.request))

    def _scan(self, conn: Conn) -> None:
        """Take a scan slot and send the message to clamd (engine/pending.py)."""
        conn.state = SCANNING
        assert conn.pipeline is not None and conn.prepared is not None  # noqa: S101
        now = time.monotonic()
        scan = conn.scan = PendingScan(conn.pipeline.engine, conn.prepared.fd, conn.deadline, now)
        self._step(conn, None, scan.start(now))

    def _on_reply(self, conn: Conn) -> None:
        scan = conn.scan
        assert scan is not None  # noqa: S101 - only scanning connections are in self.scans
        session = scan.session
        self._step(conn, session, scan.receive(time.monotonic()))

    def _scan_timeout(self, conn: Conn) -> None:
        scan = conn.scan
        assert scan is not None  # noqa: S101
        session = scan.session
        self._step(conn, session, scan.timeout(time.monotonic()))

    def _step(self, conn: Conn, before: Session | None, verdict: Verdict | None) -> None:
        """After a step of the scan: watch the session it now waits on, or judge."""
        self._follow(conn, before)
        if verdict is not None:
            assert conn.scan is not None and conn.prepared is not None  # noqa: S101
            conn.prepared.scan_ms = (time.monotonic() - conn.scan.started) * 1000
            self._judge(conn, verdict)

    def _follow(self, conn: Conn, before: Session | None) -> None:
        """Keep self.scans and self.resting in step with the session the scan waits on."""
        scan = conn.scan
        assert scan is not None  # noqa: S101
        after = scan.session
        if before is not None and before is not after:
            del self.scans[before.fd]  # closed (out of epoll with it), or back in its pool
            if not before.closed:
                self.resting[before.fd] = before
        if after is not None and after is not before:
            self.resting.pop(after.fd, None)
            self.scans[after.fd] = conn
            if not after.watched:
                self.ep.register(after.fd, _IN)
                after.watched = True
            self._timer(conn, scan.attempt_until)

    def _judge(self, conn: Conn, verdict: Verdict) -> None:
        """The scan is over (or was not needed): free its slot, decide, complete, answer."""
        if conn.state == SCANNING:
            conn.state = JUDGING  # the slot is free: _abort must not free it again
            self.slots.release(wake=False)
            self._next_waiting()
        pipeline, prepared = conn.pipeline, conn.prepared
        if policy.hides(verdict, pipeline.cfg):
            # every name, not just clamd's first (secondlook.py): more scans, in a worker
            self._hand_over(conn.sock, lambda: self._look_again_in_worker(conn, verdict))
            conn.state = DONE  # the worker's now: _abort leaves it alone
            return
        try:
            judged = pipeline.judge(prepared, verdict)
        except Exception as e:  # noqa: BLE001
            prepared.close()
            self._finish(conn, pipeline.internal_error(prepared.request, e))
            return
        self._carry_out(conn, judged)

    def _carry_out(self, conn: Conn, judged: Judged) -> None:
        """Complete a judged message (Pipeline.complete closes its files): in a worker when
        that writes files."""
        if judged.writes:
            self._hand_over(conn.sock, lambda: self._complete_in_worker(conn, judged))
            conn.state = DONE
            return
        self._finish(conn, self._complete(conn, judged))

    def _complete(self, conn: Conn, judged: Judged) -> Outcome:
        try:
            return conn.pipeline.complete(judged, conn.dry_run)
        except Exception as e:  # noqa: BLE001
            judged.prepared.close()
            return conn.pipeline.internal_error(judged.prepared.request, e)

    def _look_again_in_worker(self, conn: Conn, verdict: Verdict) -> None:
        pipeline, prepared = conn.pipeline, conn.prepared
        try:
            started = time.monotonic()
            verdict = pipeline.look_again(prepared, verdict, conn.deadline)
            prepared.scan_ms += (time.monotonic() - started) * 1000
            judged = pipeline.judge(prepared, verdict)
        except Exception as e:  # noqa: BLE001 - a bug must defer the mail, never accept it
            prepared.close()
            outcome = pipeline.internal_error(prepared.request, e)
        else:
            outcome = self._complete(conn, judged)
        self._answer_in_worker(conn, outcome)

    def _complete_in_worker(self, conn: Conn, judged: Judged) -> None:
        self._answer_in_worker(conn, self._complete(conn, judged))

    def _answer_in_worker(self, conn: Conn, outcome: Outcome) -> None:
        """Log, count and reply; Courier gets a reply even when the log line fails (432, as
        the loop's _abort answers)."""
        reply = outcome.reply
        try:
            self._conclude(conn.pipeline, conn.request, conn.dry_run, outcome)
        except Exception:  # noqa: BLE001 - Courier must get an answer
            log.exception("internal error on %s", conn.request.data_path)
            reply = INTERNAL_ERROR
        send_reply(conn.sock, reply)
        conn.pipeline.notify(outcome)  # after the reply: Courier never waits for a notice

    def _next_waiting(self) -> None:
        """Start the waiting scans there is room for. Not re-entered: a scan that fails at once
        (clamd gone) frees its slot from inside _scan, and with hundreds waiting the recursion
        would go as deep; the outer call's loop takes them one after the other instead."""
        if self.starting:
            return
        self.starting = True
        try:
            while self.waiting and self.slots.try_take():
                self._scan(self.waiting.popleft())
        finally:
            self.starting = False

    def _finish(self, conn: Conn, outcome: Outcome) -> None:
        self._conclude(conn.pipeline, conn.request, conn.dry_run, outcome)
        self._reply(conn, outcome.reply)

    def _conclude(self, pipeline: Pipeline, request: Request, dry: bool, outcome: Outcome) -> None:
        pipeline.log(request, outcome, dry)
        self.stats.record(outcome)

    # ---- clamd sessions -----------------------------------------------------------------------
    def _expire_sessions(self, now: float) -> None:
        current = self.source.pipeline.engine
        for engine in list(self.engines):
            for backend in engine.backends:
                if engine is current:
                    closed = backend.sessions.expire(now)
                else:
                    closed = backend.sessions.close()  # a reload replaced this engine
                self._forget(closed)
            if engine is not current:
                self.engines.remove(engine)

    def _forget(self, closed: list[Session]) -> None:
        for session in closed:
            if self.resting.get(session.fd) is session:
                del self.resting[session.fd]

    def _close_sessions(self) -> None:
        for engine in self.engines:
            for backend in engine.backends:
                self._forget(backend.sessions.close())
