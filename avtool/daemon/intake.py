"""The loop's side facing Courier: accepting connections and reading requests, within limits.

Courier writes the request as it connects (courierfilter(8)), so a connection is usually read
whole by the first ``recv`` after ``accept``; one still sending is a ``Reader`` in epoll with
a ``serve.read_timeout`` timer. At most ``cap`` connections are held or queued for the
workers: then the listener leaves epoll (the kernel's backlog holds the rest) until a
connection is closed or a worker is done. An ``accept`` that fails (EMFILE) pauses accepting
for ACCEPT_PAUSE instead of spinning on a listener that stays readable.

``Loop`` (loop.py) builds on this: it gets each request read (``_start``) and serves it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from avtool.config import keys as K
from avtool.courier import protocol
from avtool.courier.protocol import Reply, Request
from avtool.daemon.conns import DONE, Conn, Reader, Timers
from avtool.daemon.pipeline import Pipeline
from avtool.daemon.workers import INTERNAL_ERROR, Workers, answer_early, send_reply

log = logging.getLogger("avtool")
ACCEPT_PAUSE = 0.5  # seconds without accepting after accept() failed (EMFILE)
SLOW_LIMIT = 512  # connections held beyond max_connections (clients still sending)
_IN = select.EPOLLIN
_DONTWAIT = socket.MSG_DONTWAIT


class Source(Protocol):
    """Where a message finds its pipeline: the current one (server.FilterServer)."""

    @property
    def pipeline(self) -> Pipeline: ...


class Intake(ABC):
    """Accepts on ``listener`` and reads requests; ``readers`` worker threads."""

    def __init__(
        self,
        listener: socket.socket,
        source: Source,
        *,
        readers: int,
        wake: tuple[int, int],
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self.source = source
        self.wake_r, self.wake_w = wake
        self.stopping = stopping
        self.clock = clock
        self.ep = select.epoll()
        self.reading: dict[int, Reader] = {}  # client fd -> connection still sending
        self.timers = Timers()
        self.held = 0  # client connections the loop holds (reading, waiting, scanning)
        self.cap = readers + SLOW_LIMIT
        self.accepting = False
        self.resume_at: float | None = None  # paused after an accept error until then
        self.workers = Workers(readers, self.cap, self._wake_if_full)

    def busy(self) -> int:
        """Messages in flight (Loop counts its scans too)."""
        return self.workers.pending

    @abstractmethod
    def _start(self, reader: Reader, request: Request) -> None:
        """Serve the request ``reader`` has read (Loop)."""

    def _abort(self, conn: Reader | Conn) -> None:
        """Let go of everything ``conn`` holds, answer 432 and close (after a bug)."""
        if isinstance(conn, Reader):
            with contextlib.suppress(Exception):
                self._forget_reader(conn)
        if isinstance(conn, Reader) or conn.state != DONE:
            self._reply(conn, INTERNAL_ERROR)

    def _reply(self, conn: Reader | Conn, reply: Reply) -> None:
        send_reply(conn.sock, reply)
        self._close(conn)

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
        for reader in list(self.reading.values()):
            self._forget_reader(reader)
            self._answer_early(reader, Reply(432, "4.3.0 Mail filter shutting down, try again"))
        if self.busy():
            log.info("draining %d message(s)", self.busy())

    def _accept(self) -> None:
        while self.held + self.workers.pending < self.cap:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and the like: the kernel's backlog holds the connections. Stop
                # watching the listener a while (it stays readable: the loop would spin).
                log.error("accept: %s; accepting again in %g s", e, ACCEPT_PAUSE)
                self._accepting(False)
                self.resume_at = self.clock() + ACCEPT_PAUSE
                return
            now = self.clock()
            reader = Reader(sock, now, now + self.source.pipeline.cfg[K.MESSAGE_TIMEOUT])
            self.held += 1
            self._guarded(self._first_read, reader)
        self._accepting(False)  # full: the kernel's backlog holds the rest

    def _first_read(self, reader: Reader) -> None:
        """Courier writes the request as it connects: usually it is all there already."""
        until = reader.accepted + self.source.pipeline.cfg[K.READ_TIMEOUT]
        self._read(reader, until, first=True)

    def _read(self, reader: Reader, until: float = 0.0, *, first: bool = False) -> None:
        try:
            chunk = reader.sock.recv(65536, _DONTWAIT)
        except BlockingIOError:
            chunk = None
        except OSError as e:
            log.warning("client went away: %s", e)
            self._forget_reader(reader)
            self._close(reader)
            return
        if chunk is not None:
            try:
                if not chunk:
                    reader.parser.finish()
                request = reader.parser.feed(chunk)
            except protocol.ProtocolError as e:
                self._forget_reader(reader)
                if reader.parser.received:
                    log.warning("bad request: %s", e)
                else:  # connected and closed: a check that the socket answers (the doctor's)
                    log.debug("a connection closed before sending anything")
                self._answer_early(reader, e.reply)
                return
            if request is not None:
                self._forget_reader(reader)
                self._start(reader, request)
                return
        if first:
            self.reading[reader.fd] = reader
            self.ep.register(reader.fd, _IN)
            self._timer(reader, until)

    def _forget_reader(self, reader: Reader) -> None:
        if self.reading.pop(reader.fd, None) is not None:
            self.ep.unregister(reader.fd)
        reader.gen += 1  # its read timer is void

    def _read_timeout(self, reader: Reader) -> None:
        log.warning("no complete request within serve.read_timeout")
        self._forget_reader(reader)
        self._answer_early(reader, Reply(432, "4.3.0 Timeout reading the filter request"))

    def _answer_early(self, reader: Reader, reply: Reply) -> None:
        """Reply before the request was read to its end, in a worker (it reads what the client
        still sends, up to a second: closing with unread input can destroy the reply)."""
        self._hand_over(reader.sock, lambda: answer_early(reader.sock, reply))

    def _close(self, conn: Reader | Conn) -> None:
        if isinstance(conn, Conn):
            conn.state = DONE
            conn.scan = None  # a void timer may keep conn a while
        conn.gen += 1
        conn.sock.close()
        self._release_hold()

    def _release_hold(self) -> None:
        self.held -= 1
        self._resume()

    def _resume(self) -> None:
        """Accept again when there is room, unless stopping or paused after an accept error."""
        if (
            not self.accepting
            and self.held + self.workers.pending < self.cap
            and self.resume_at is None
            and not self.stopping.is_set()
        ):
            self._accepting(True)

    def _hand_over(self, sock: socket.socket, job: Callable[[], None]) -> None:
        """Run ``job`` in a worker, then close ``sock``. The connection still counts against
        ``cap`` until the worker is done (workers.py)."""

        def run() -> None:
            try:
                job()
            finally:
                sock.close()

        self.workers.submit(run)
        self._release_hold()

    def _wake_if_full(self) -> None:
        """In a worker, after a job: wake a loop that stopped accepting for want of room."""
        if not self.accepting:
            with contextlib.suppress(OSError):  # full: the loop is being woken anyway
                os.write(self.wake_w, b"w")

    def _timer(self, conn: Reader | Conn, when: float) -> None:
        self.timers.set(conn, when, self.held)

    def _on_stdin(self) -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            log.info("stdin closed: stopping")
            self.stopping.set()
            with contextlib.suppress(OSError):
                self.ep.unregister(0)

    def _guarded(self, handler: Callable[[Any], None], conn: Reader | Conn) -> None:
        """A bug while handling one connection (``handler`` takes it, a Reader or a Conn)
        defers that message (432) and the loop goes on serving the others."""
        try:
            handler(conn)
        except Exception:  # noqa: BLE001 - one message must never stop the filter
            log.exception("connection failed")
            self._abort(conn)
