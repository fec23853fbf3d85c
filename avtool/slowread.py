"""Requests that do not arrive at once: one selector thread finishes reading them.

Courier writes its whole request as soon as it connects, so a reader thread nearly always has
it within its first short wait (server.FIRST_READ). A client that sends slowly, or nothing at
all, is handed over here: it then holds a file descriptor, not one of the reader threads, and
no number of idle connections can keep real mail from being read (notes/courier.md §3: every
request is one connection). What arrives in time goes on as any request does, in a thread of
its own that waits for a scan slot; what does not gets its 432 at ``serve.read_timeout``.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from avtool.courier import protocol
from avtool.courier.protocol import Reply, Request, RequestReader

log = logging.getLogger("avtool.server")

TIMEOUT_REPLY = Reply(432, "4.3.0 Timeout reading the filter request")


@dataclass(order=True)
class _Slow:
    until: float
    seq: int
    conn: socket.socket = field(compare=False)
    parser: RequestReader = field(compare=False)
    deadline: float = field(compare=False)  # the message's, for the scan


class SlowReaders:
    """Reads the rest of requests and hands each, in blocking mode, to ``finish(conn, request,
    deadline)`` or, for a bad one, ``early(conn, reply)``. Both own the connection from then
    on, are called in this thread and must not block: they start threads of their own.
    At most ``limit`` connections at once: one more is answered 432 at once."""

    def __init__(
        self,
        finish: Callable[[socket.socket, Request, float], None],
        early: Callable[[socket.socket, Reply], None],
        limit: int,
    ) -> None:
        self._finish = finish
        self._early = early
        self.limit = limit
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._incoming: list[_Slow] = []
        self._pending: dict[socket.socket, _Slow] = {}
        self._by_time: list[_Slow] = []
        self._seq = 0
        self._count = 0  # pending + incoming, for the limit
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="slow-readers", daemon=True)
        self._thread.start()

    def add(
        self, conn: socket.socket, parser: RequestReader, until: float, deadline: float
    ) -> bool:
        """Take ``conn`` over (True), or False when full or stopping: the caller keeps it."""
        with self._lock:
            if self._stopping or self._count >= self.limit:
                return False
            self._count += 1
            self._seq += 1
            self._incoming.append(_Slow(until, self._seq, conn, parser, deadline))
        self._wake()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Answer 432 to every request still being read, and end the thread."""
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # ---- the thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while self._step():
                pass
        except Exception:  # noqa: BLE001 - log it; the connections still get an answer below
            log.exception("slow reader failed")
        for slow in list(self._pending.values()) + self._take_incoming():
            self._drop(slow, TIMEOUT_REPLY)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _step(self) -> bool:
        for slow in self._take_incoming():
            slow.conn.setblocking(False)
            self._pending[slow.conn] = slow
            self._selector.register(slow.conn, selectors.EVENT_READ)
            heapq.heappush(self._by_time, slow)
        if self._stopping:
            return False
        now = time.monotonic()
        while self._by_time and self._by_time[0].until <= now:
            slow = heapq.heappop(self._by_time)
            if self._pending.get(slow.conn) is slow:
                log.warning("no complete request within serve.read_timeout")
                self._drop(slow, TIMEOUT_REPLY)
        wait = self._by_time[0].until - now if self._by_time else None
        for key, _ in self._selector.select(wait):
            if key.fileobj is self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            else:
                conn = key.fileobj
                assert isinstance(conn, socket.socket)  # noqa: S101 - only sockets registered
                self._readable(self._pending[conn])
        return True

    def _take_incoming(self) -> list[_Slow]:
        with self._lock:
            taken, self._incoming = self._incoming, []
        return taken

    def _readable(self, slow: _Slow) -> None:
        try:
            chunk = slow.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("client went away: %s", e)
            self._forget(slow)
            slow.conn.close()
            return
        if not chunk:
            log.warning("bad request: connection closed before the blank line")
            self._forget(slow)
            slow.conn.close()
            return
        try:
            request = slow.parser.feed(chunk)
        except protocol.ProtocolError as e:
            log.warning("bad request: %s", e)
            self._hand_over(slow, self._early, e.reply)
            return
        if request is not None:
            self._hand_over(slow, self._finish, request, slow.deadline)

    def _hand_over(self, slow: _Slow, target: Callable[..., None], *args: object) -> None:
        """Out of the selector, blocking again, to ``target``."""
        self._forget(slow)
        slow.conn.setblocking(True)
        target(slow.conn, *args)

    def _drop(self, slow: _Slow, reply: Reply) -> None:
        """Answer without waiting (a client that sends nothing reads nothing either) and close."""
        self._forget(slow)
        with contextlib.suppress(OSError):
            slow.conn.send(protocol.format_reply(reply))
        slow.conn.close()

    def _forget(self, slow: _Slow) -> None:
        if self._pending.pop(slow.conn, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(slow.conn)
        with self._lock:
            self._count -= 1
