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

Limits, as before: ``serve.max_scans`` scans at once (more wait in a FIFO within their
``message_timeout``, then 432), ``serve.read_timeout`` for a whole request, at most
``max_connections`` + SLOW_LIMIT connections held (then the loop stops accepting and the
kernel's backlog holds the rest).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from avtool.config import keys as K
from avtool.courier import protocol
from avtool.courier.protocol import Reply, Request, RequestReader
from avtool.daemon import policy
from avtool.daemon.pipeline import Judged, Outcome, Pipeline, Prepared
from avtool.engine import Engine
from avtool.engine.pending import PendingScan
from avtool.engine.session import Session
from avtool.engine.verdict import Verdict

if TYPE_CHECKING:
    from avtool.daemon.server import FilterServer

log = logging.getLogger("avtool")
ACCEPT_PAUSE = 0.5  # seconds without accepting after accept() failed (EMFILE)
SLOW_LIMIT = 512  # connections held beyond max_connections (clients still sending)
EXPIRE_EVERY = 5.0  # seconds between closing clamd sessions idle too long
COMPACT_AT = 4096  # timers kept before the void ones are swept out
_IN = select.EPOLLIN
_DONTWAIT = socket.MSG_DONTWAIT
_BUSY = Reply(432, "4.3.2 Virus scanner busy, try again later")

# What a connection is doing; its timer is valid only while its ``gen`` is unchanged.
READING, WAITING, SCANNING, JUDGING, DONE = range(5)


class Conn:
    """One client connection (one message) and, while it is scanned, its clamd session."""

    __slots__ = (
        "sock", "fd", "state", "gen", "parser", "accepted", "deadline", "request", "pipeline",
        "dry_run", "prepared", "scan",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, now: float, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = READING
        self.gen = 0
        self.parser: RequestReader | None = None
        self.accepted = now
        self.deadline = deadline  # serve.message_timeout from the accept
        self.request: Request | None = None
        self.pipeline: Pipeline | None = None
        self.dry_run = False
        self.prepared: Prepared | None = None
        self.scan: PendingScan | None = None


class Workers:
    """A fixed set of threads for blocking work; ``submit`` never blocks the loop."""

    def __init__(self, count: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # noqa: BLE001 - one message must never kill a worker
                log.exception("worker job failed")

    def stop(self, deadline: float) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class Loop:
    """Serves the listening socket of ``server`` until it is told to stop, then drains."""

    def __init__(self, server: FilterServer, listener: socket.socket) -> None:
        self.server = server
        self.listener = listener
        self.ep = select.epoll()
        self.reading: dict[int, Conn] = {}  # client fd -> connection still sending
        self.scans: dict[int, Conn] = {}  # clamd session fd -> connection being scanned
        # Idle sessions stay registered with epoll (no register/unregister per scan); an
        # event on one is clamd closing it.
        self.resting: dict[int, Session] = {}
        self.waiting: deque[Conn] = deque()  # for a scan slot
        self.timers: list[tuple[float, int, int, Conn]] = []  # (when, seq, gen, conn)
        self.seq = 0
        self.scanning = 0
        self.starting = False  # inside _next_waiting
        self.held = 0  # client connections the loop holds (reading, waiting, scanning)
        self.in_workers = 0  # messages handed to workers, not yet answered
        self.count_lock = threading.Lock()
        cfg = server.cfg
        self.max_scans = cfg[K.MAX_SCANS] or 2 * (os.cpu_count() or 1)
        self.cap = server.readers + SLOW_LIMIT
        self.accepting = False
        self.resume_at: float | None = None  # paused after an accept error until then
        self.workers = Workers(server.readers)
        self.engines: list[Engine] = []  # engines whose sessions this loop opened

    # ---- the loop -------------------------------------------------------------------------------
    def run(self, watch_stdin: bool) -> None:
        server = self.server
        ep = self.ep
        lfd = self.listener.fileno()
        self.listener.setblocking(False)
        self._accepting(True)
        ep.register(server.wake_r, _IN)
        if watch_stdin:
            ep.register(0, _IN)
        reading, scans = self.reading, self.scans
        expire_at = time.monotonic() + EXPIRE_EVERY
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            if drain_until is None and server.stopping.is_set():
                drain_until = now + server.cfg[K.DRAIN_TIMEOUT]
                self._refuse()
            if drain_until is not None:
                if self.idle():
                    break
                if now >= drain_until:
                    log.warning("drain deadline passed with %d message(s) in flight", self.busy())
                    break
            wait = self._wait(now, drain_until)
            for fd, _ in ep.poll(wait):
                if fd == lfd:
                    self._accept()
                elif (conn := scans.get(fd)) is not None:
                    self._guarded(self._on_reply, conn)
                elif (conn := reading.get(fd)) is not None:
                    self._guarded(self._read, conn)
                elif fd == server.wake_r:
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        os.read(server.wake_r, 512)
                    self._resume()  # a signal, or a worker done while the loop was full
                elif fd == 0:
                    self._on_stdin()
                elif (idle := self.resting.pop(fd, None)) is not None and idle.pool:
                    idle.pool.discard(idle)  # ended by clamd (its ReadTimeout)
            now = time.monotonic()
            self._run_timers(now)
            if self.resume_at is not None and now >= self.resume_at:
                self.resume_at = None
                self._resume()
            if now >= expire_at:
                expire_at = now + EXPIRE_EVERY
                self._expire_sessions(now)
        self._close_sessions()
        self.workers.stop(drain_until or time.monotonic())
        self.ep.close()

    def busy(self) -> int:
        with self.count_lock:
            workers = self.in_workers
        return self.scanning + len(self.waiting) + workers

    def idle(self) -> bool:
        return not self.scans and not self.waiting and not self.in_workers

    def _wait(self, now: float, drain_until: float | None) -> float:
        """Seconds epoll may sleep: until the next timer; during the drain, briefly (workers
        finish without telling the loop); with idle clamd sessions, until they are checked."""
        timers = self.timers
        while timers and timers[0][2] != timers[0][3].gen:
            heapq.heappop(timers)  # stale: the connection moved on
        wait = max(0.0, timers[0][0] - now) if timers else -1.0
        if self.resume_at is not None:
            until = max(0.0, self.resume_at - now)
            wait = until if wait < 0 else min(wait, until)
        if drain_until is not None:
            wait = 0.05 if wait < 0 else min(wait, 0.05)
        elif self.resting:  # wake up to close sessions idle too long, even with no mail
            wait = EXPIRE_EVERY if wait < 0 else min(wait, EXPIRE_EVERY)
        return wait

    def _timer(self, conn: Conn, when: float) -> None:
        conn.gen += 1
        self.seq += 1
        timers = self.timers
        heapq.heappush(timers, (when, self.seq, conn.gen, conn))
        if len(timers) > COMPACT_AT and len(timers) > 4 * self.held:
            # Most timers are void (the scan answered long before scan_timeout): drop them
            # rather than keep every finished connection until its timer would have fired.
            timers[:] = [t for t in timers if t[2] == t[3].gen]
            heapq.heapify(timers)

    def _run_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, gen, conn = heapq.heappop(timers)
            if gen != conn.gen:
                continue
            if conn.state == READING:
                self._guarded(self._read_timeout, conn)
            elif conn.state == WAITING:
                self._guarded(self._slot_timeout, conn)
            elif conn.state == SCANNING:
                self._guarded(self._scan_timeout, conn)

    def _on_stdin(self) -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            log.info("stdin closed: stopping")
            self.server.stopping.set()
            with contextlib.suppress(OSError):
                self.ep.unregister(0)

    # ---- connections ----------------------------------------------------------------------------
    def _accepting(self, on: bool) -> None:
        if on != self.accepting:
            if on:
                self.ep.register(self.listener.fileno(), _IN)
            else:
                self.ep.unregister(self.listener.fileno())
            self.accepting = on

    def _refuse(self) -> None:
        """Stop: refuse new connections (Courier answers 432), answer the ones still sending."""
        self._accepting(False)
        with contextlib.suppress(OSError):
            # The socket file stays while the filter is linked in active/: with no socket at
            # all Courier accepts mail UNFILTERED (docs/notes/courier.md §3; bench/faults.py).
            self.listener.shutdown(socket.SHUT_RDWR)
        for conn in list(self.reading.values()):
            self._forget_reader(conn)
            self._answer_early(conn, Reply(432, "4.3.0 Mail filter shutting down, try again"))
        if self.busy():
            log.info("draining %d message(s)", self.busy())

    def _accept(self) -> None:
        server = self.server
        cfg = server.cfg
        while self.held + self.in_workers < self.cap:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and the like: the kernel's backlog holds the connections. Stop
                # watching the listener a while (it stays readable: the loop would spin).
                log.error("accept: %s; accepting again in %g s", e, ACCEPT_PAUSE)
                self._accepting(False)
                self.resume_at = time.monotonic() + ACCEPT_PAUSE
                return
            now = time.monotonic()
            conn = Conn(sock, now, now + cfg[K.MESSAGE_TIMEOUT])
            self.held += 1
            self._guarded(self._first_read, conn)
        self._accepting(False)  # full: the kernel's backlog holds the rest

    def _first_read(self, conn: Conn) -> None:
        """Courier writes the request as it connects: usually it is all there already."""
        self._read(conn, conn.accepted + self.server.cfg[K.READ_TIMEOUT], first=True)

    def _read(self, conn: Conn, until: float = 0.0, *, first: bool = False) -> None:
        try:
            chunk = conn.sock.recv(65536, _DONTWAIT)
        except BlockingIOError:
            chunk = None
        except OSError as e:
            log.warning("client went away: %s", e)
            self._forget_reader(conn)
            self._close(conn)
            return
        if chunk is not None:
            if conn.parser is None:
                conn.parser = RequestReader()
            try:
                if not chunk:
                    conn.parser.finish()
                request = conn.parser.feed(chunk)
            except protocol.ProtocolError as e:
                self._forget_reader(conn)
                if conn.parser.received:
                    log.warning("bad request: %s", e)
                else:  # connected and closed: a check that the socket answers (the doctor's)
                    log.debug("a connection closed before sending anything")
                self._answer_early(conn, e.reply)
                return
            if request is not None:
                self._forget_reader(conn)
                self._start(conn, request)
                return
        if first:
            self.reading[conn.fd] = conn
            self.ep.register(conn.fd, _IN)
            self._timer(conn, until)

    def _guarded(self, handler: Callable[[Conn], None], conn: Conn) -> None:
        """A bug while handling one connection defers that message (432) and the loop goes on
        serving the others."""
        try:
            handler(conn)
        except Exception:  # noqa: BLE001 - one message must never stop the filter
            log.exception("connection failed")
            self._abort(conn)

    def _abort(self, conn: Conn) -> None:
        """Let go of everything ``conn`` holds, answer 432 and close (after a bug)."""
        with contextlib.suppress(Exception):
            if conn.fd in self.reading:
                self._forget_reader(conn)
            if conn.scan is not None:
                session = conn.scan.session
                conn.scan.abandon()
                self._follow(conn, session)
            if conn in self.waiting:
                self.waiting.remove(conn)
            if conn.prepared is not None:
                conn.prepared.close()
            if conn.state == SCANNING:
                self.scanning -= 1
        if conn.state != DONE:
            self._reply(conn, Reply(432, "4.3.0 avtool internal error"))
        with contextlib.suppress(Exception):
            self._next_waiting()

    def _forget_reader(self, conn: Conn) -> None:
        if self.reading.pop(conn.fd, None) is not None:
            self.ep.unregister(conn.fd)
        conn.gen += 1  # its read timer is void

    def _read_timeout(self, conn: Conn) -> None:
        log.warning("no complete request within serve.read_timeout")
        self._forget_reader(conn)
        self._answer_early(conn, Reply(432, "4.3.0 Timeout reading the filter request"))

    def _answer_early(self, conn: Conn, reply: Reply) -> None:
        """Reply before the request was read to its end, in a worker (it reads what the client
        still sends, up to a second: closing with unread input can destroy the reply)."""
        conn.state = DONE
        self._hand_over(conn, lambda: _answer_early(conn.sock, reply))

    def _close(self, conn: Conn) -> None:
        conn.state = DONE
        conn.gen += 1
        conn.sock.close()
        conn.prepared = conn.pipeline = conn.scan = None  # a void timer may keep conn a while
        self._release_hold()

    def _release_hold(self) -> None:
        self.held -= 1
        self._resume()

    def _resume(self) -> None:
        """Accept again when there is room, unless stopping or paused after an accept error."""
        if (
            not self.accepting
            and self.held + self.in_workers < self.cap
            and self.resume_at is None
            and not self.server.stopping.is_set()
        ):
            self._accepting(True)

    def _hand_over(self, conn: Conn, job: Callable[[], None]) -> None:
        """Run ``job`` in a worker, then close the connection. The connection still counts
        against ``cap`` until the worker is done (the workers' queue is bounded by it): a loop
        that stopped accepting for that is woken when a worker finishes."""
        with self.count_lock:
            self.in_workers += 1
        self._release_hold()
        wake = self.server.wake_w

        def run() -> None:
            try:
                job()
            finally:
                conn.sock.close()
                with self.count_lock:
                    self.in_workers -= 1
                if not self.accepting:
                    with contextlib.suppress(OSError):  # full: the loop is being woken anyway
                        os.write(wake, b"w")

        self.workers.submit(run)

    # ---- one message ------------------------------------------------------------------------
    def _start(self, conn: Conn, request: Request) -> None:
        server = self.server
        conn.request = request
        pipeline = server.pipeline  # a reload swaps it: this message keeps the one it began with
        engine = pipeline.engine
        if not engine.fildes_only:
            # Some clamd is reached over TCP (INSTREAM) or by path: the blocking way, in a worker.
            conn.state = DONE
            self._hand_over(conn, lambda: server.answer(conn.sock, request, conn.deadline))
            return
        if engine not in self.engines:
            self.engines.append(engine)
        conn.pipeline = pipeline
        conn.dry_run = pipeline.cfg[K.DRY_RUN]
        try:
            prepared = pipeline.prepare(request)
        except Exception as e:  # noqa: BLE001 - a bug must defer the mail, never accept it
            prepared = pipeline.internal_error(request, e)
        if isinstance(prepared, Outcome):
            self._finish(conn, prepared)
            return
        if isinstance(prepared, Judged):  # exempt, but its header needs work
            conn.prepared = prepared.prepared
            self._carry_out(conn, prepared)
            return
        conn.prepared = prepared
        size_limit = engine.max_size
        if prepared.size > size_limit:
            self._judge(conn, engine.too_large(prepared.size))
            return
        if self.scanning < self.max_scans:
            self._scan(conn)
        else:
            conn.state = WAITING
            self.waiting.append(conn)
            self._timer(conn, conn.deadline)

    def _slot_timeout(self, conn: Conn) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(conn)
        assert conn.request is not None  # noqa: S101 - WAITING comes after the request
        self.server.stats.count_timeout()
        log.warning("no scan slot within serve.message_timeout: %s", conn.request.data_path)
        if conn.prepared is not None:
            conn.prepared.close()
        self._reply(conn, _BUSY)

    def _scan(self, conn: Conn) -> None:
        """Take a scan slot and send the message to clamd (engine/pending.py)."""
        self.scanning += 1
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
            self.scanning -= 1
            conn.state = JUDGING  # the slot is free: _abort must not free it again
            self._next_waiting()
        pipeline, prepared = conn.pipeline, conn.prepared
        assert pipeline is not None and prepared is not None  # noqa: S101
        if policy.hides(verdict, pipeline.cfg):
            # every name, not just clamd's first (secondlook.py): more scans, in a worker
            conn.state = DONE
            self._hand_over(conn, lambda: self._look_again_in_worker(conn, verdict))
            return
        try:
            judged = pipeline.judge(prepared, verdict)
        except Exception as e:  # noqa: BLE001
            prepared.close()
            self._finish(conn, pipeline.internal_error(prepared.request, e))
            return
        self._carry_out(conn, judged)

    def _carry_out(self, conn: Conn, judged: Judged) -> None:
        """Complete a judged message: in a worker when that writes files."""
        judged.prepared.close()
        if judged.writes:
            conn.state = DONE
            self._hand_over(conn, lambda: self._complete_in_worker(conn, judged))
            return
        self._finish(conn, self._complete(conn, judged))

    def _complete(self, conn: Conn, judged: Judged) -> Outcome:
        pipeline = conn.pipeline
        assert pipeline is not None  # noqa: S101
        try:
            return pipeline.complete(judged, conn.dry_run)
        except Exception as e:  # noqa: BLE001
            return pipeline.internal_error(judged.prepared.request, e)

    def _look_again_in_worker(self, conn: Conn, verdict: Verdict) -> None:
        pipeline, prepared = conn.pipeline, conn.prepared
        assert pipeline is not None and prepared is not None  # noqa: S101
        try:
            started = time.monotonic()
            verdict = pipeline.look_again(prepared, verdict, conn.deadline)
            prepared.scan_ms += (time.monotonic() - started) * 1000
            judged = pipeline.judge(prepared, verdict)
        except Exception as e:  # noqa: BLE001 - a bug must defer the mail, never accept it
            outcome = pipeline.internal_error(prepared.request, e)
        else:
            outcome = self._complete(conn, judged)
        finally:
            prepared.close()
        self._conclude(conn, outcome)
        _send_reply(conn.sock, outcome.reply)

    def _complete_in_worker(self, conn: Conn, judged: Judged) -> None:
        outcome = self._complete(conn, judged)
        self._conclude(conn, outcome)
        _send_reply(conn.sock, outcome.reply)

    def _next_waiting(self) -> None:
        """Start the waiting scans there is room for. Not re-entered: a scan that fails at once
        (clamd gone) frees its slot from inside _scan, and with hundreds waiting the recursion
        would go as deep; the outer call's loop takes them one after the other instead."""
        if self.starting:
            return
        self.starting = True
        try:
            while self.waiting and self.scanning < self.max_scans:
                self._scan(self.waiting.popleft())
        finally:
            self.starting = False

    def _finish(self, conn: Conn, outcome: Outcome) -> None:
        self._conclude(conn, outcome)
        self._reply(conn, outcome.reply)

    def _conclude(self, conn: Conn, outcome: Outcome) -> None:
        assert conn.pipeline is not None and conn.request is not None  # noqa: S101
        conn.pipeline.log(conn.request, outcome, conn.dry_run)
        self.server.stats.record(outcome)

    def _reply(self, conn: Conn, reply: Reply) -> None:
        _send_reply(conn.sock, reply)
        self._close(conn)

    # ---- clamd sessions -----------------------------------------------------------------------
    def _expire_sessions(self, now: float) -> None:
        current = self.server.pipeline.engine
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


def _send_reply(sock: socket.socket, reply: Reply) -> None:
    """The reply is a few bytes into an empty socket buffer: it does not block."""
    try:
        sock.send(protocol.format_reply(reply), _DONTWAIT)
    except OSError as e:
        log.warning("could not reply to Courier: %s", e)


def _answer_early(sock: socket.socket, reply: Reply) -> None:
    """Reply before the request was read to its end, then read what the client still sends
    (bounded) before closing: closing with unread input resets the connection, which can
    destroy the reply on its way."""
    with contextlib.suppress(OSError):
        sock.settimeout(2.0)
        sock.sendall(protocol.format_reply(reply))
        sock.shutdown(socket.SHUT_WR)
        budget, until = 4 << 20, time.monotonic() + 1.0
        while budget > 0 and (left := until - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            budget -= len(chunk)
