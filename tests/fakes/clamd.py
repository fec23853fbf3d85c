"""Fake clamds on unix sockets that misbehave on purpose (design.md, convention 10).

Each one reads a whole request as clamd would (a ``z...\\0`` command; the descriptor of FILDES;
the chunks of INSTREAM up to the zero-length one), then does what its ``behaviour`` says:

- ``reply``: send ``reply`` (default ``b"PONG\\0"`` to PING, else the fixed ``reply``) and close;
  ``delay`` seconds late if given (a slow clamd).
- ``hang``: never answer (until stopped).
- ``garbage``: answer bytes that are no clamd reply.
- ``mid_reply``: send half a reply, no ``\\0``, and close.
- ``reset``: close without reading the request, so the client gets ECONNRESET/EPIPE.
- ``size_limit``: for INSTREAM, read ``limit`` bytes, answer ``INSTREAM size limit exceeded.
  ERROR`` and hang up at once, the way clamd does (docs/notes/clamav.md section 2); ``lost_reply``
  sends nothing before hanging up (the reply lost in the reset) but still answers PING.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

BEHAVIOURS = ("reply", "hang", "garbage", "mid_reply", "reset", "size_limit", "lost_reply")


class FakeClamd:
    def __init__(
        self,
        path: Path,
        behaviour: str = "reply",
        *,
        reply: bytes = b"stream: OK\0",
        limit: int = 1 << 20,
        delay: float = 0.0,
    ) -> None:
        assert behaviour in BEHAVIOURS, behaviour
        self.path = path
        self.behaviour = behaviour
        self.reply = reply
        self.limit = limit
        self.delay = delay  # seconds before each reply: a slow clamd
        self.connections = 0
        self.commands: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return str(self.path)

    def __enter__(self) -> FakeClamd:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> FakeClamd:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        thread = threading.Thread(target=self._accept, name=f"fake-{self.behaviour}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for thread in self._threads:
            thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            if self.behaviour == "reset":
                # Wait for the request to arrive, leave it unread and close: on a unix socket,
                # closing with unread data makes the peer's next recv fail with ECONNRESET.
                select.select([conn], [], [], 2)
                return
            try:
                command = self._read_request(conn)
            except (OSError, ValueError):
                return
            with self._lock:
                self.commands.append(command)
            if command == b"zPING":
                conn.sendall(b"PONG\0")
            elif self.behaviour == "reply":
                self._stop.wait(self.delay)
                conn.sendall(self.reply)
            elif self.behaviour == "hang":
                self._stop.wait()
            elif self.behaviour == "garbage":
                conn.sendall(b"HELLO, I AM NOT CLAMD\0")
            elif self.behaviour == "mid_reply":
                conn.sendall(b"fd[5]: Eicar-Test-Sig")
            elif self.behaviour == "size_limit":
                conn.sendall(b"INSTREAM size limit exceeded. ERROR\0")

    def _read_request(self, conn: socket.socket) -> bytes:
        buf = self._recv_until(conn, b"", lambda b: b"\0" in b)
        command, _, rest = buf.partition(b"\0")
        if command == b"zFILDES":
            self._recv_until(conn, rest, lambda b: len(b) >= 1)
        elif command == b"zINSTREAM":
            self._read_stream(conn, rest)
        return command

    def _read_stream(self, conn: socket.socket, buf: bytes) -> None:
        received = 0
        while True:
            buf = self._recv_until(conn, buf, lambda b: len(b) >= 4)
            (size,) = struct.unpack("!L", buf[:4])
            if size == 0:
                return
            buf = buf[4:]
            while size:
                if not buf:
                    buf = self._recv_until(conn, buf, lambda b: len(b) > 0)
                take = min(size, len(buf))
                size -= take
                received += take
                buf = buf[take:]
                if self.behaviour in ("size_limit", "lost_reply") and received >= self.limit:
                    return  # clamd stops reading here and answers (or not) and hangs up

    def _recv_until(self, conn: socket.socket, buf: bytes, done: Callable[[bytes], bool]) -> bytes:
        while not done(buf):
            data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
            for fd in fds:
                os.close(fd)
            if not data:
                raise ValueError("client closed")
            buf += data
        return buf
