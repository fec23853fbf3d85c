"""clamd sessions for the daemon's event loop: FILDES over kept-open IDSESSION connections.

Per message a plain FILDES costs a connect, clamd's accept and a close on both sides; in a
session (``zIDSESSION``, clamd/session.c) the connection stays and each command is answered as
``<n>: <reply>\\0``, n counting the commands from 1 (measured: ``1: fd[11]: OK``). The byte
that carries the descriptor (sendmsg needs one) is read by clamd as an empty command and
ignored (measured: no reply, and the next command answers with the next number).

One scan at a time per session, so the number says which command a reply belongs to without a
table: a reply with another number is a protocol failure. clamd ends a session that sent
nothing for its ReadTimeout (clamd.conf(5): 120 s by default, 180 in Debian's clamd.conf) with
``COMMAND READ TIMED OUT`` and a close (measured); a RELOAD does not end one, and its next scan
uses the new database (measured). A closed idle session
shows up as EOF or EPIPE at its next use, which is no fault of clamd: the scan goes again once
on a new connection (``reused``). Sessions idle longer than IDLE_MAX are closed before clamd
would. The sockets are non-blocking; the loop (avtool/daemon/loop.py) waits for them with epoll.
"""

from __future__ import annotations

import socket

from avtool.engine.replies import BackendFailure

IDLE_MAX = 20.0  # seconds: closed by us well before clamd's ReadTimeout
_FILDES = b"zFILDES\0"
_CARRIER = [b"\0"]  # the byte that carries the descriptor


class Session:
    """One IDSESSION connection to a clamd unix socket."""

    __slots__ = (
        "address", "sock", "fd", "sent", "answered", "reused", "idle_since", "watched", "pool",
        "_buf",
    )  # fmt: skip

    def __init__(self, address: str, connect_timeout: float) -> None:
        self.address = address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A unix connect blocks only while clamd's backlog is full (a clamd in trouble),
            # and sessions are kept: few connects, each bounded.
            sock.settimeout(connect_timeout)
            sock.connect(address)
            sock.sendall(b"zIDSESSION\0")
            sock.setblocking(False)
        except TimeoutError:
            sock.close()
            raise BackendFailure(
                f"timeout: could not connect within {connect_timeout:g} s", timeout=True
            ) from None
        except OSError as e:
            sock.close()
            raise BackendFailure(f"cannot connect: {e.strerror or type(e).__name__}") from None
        self.sock = sock
        self.fd = sock.fileno()
        self.sent = 0  # commands sent; the reply to the last one carries this number
        self.answered = 0
        self.reused = False  # has answered before: a failure may just mean clamd closed it
        self.idle_since = 0.0
        self.watched = False  # registered with the loop's epoll (it stays while idle)
        self.pool: SessionPool | None = None  # the pool it goes back to
        self._buf = b""

    def send_fildes(self, fd: int) -> None:
        """Send FILDES and the descriptor; BackendFailure if the connection is gone."""
        try:
            self.sock.send(_FILDES)
            socket.send_fds(self.sock, _CARRIER, [fd])
        except OSError as e:  # BlockingIOError too: nothing is queued on an idle session
            raise BackendFailure(
                f"connection failed while passing the file descriptor: "
                f"{e.strerror or type(e).__name__}"
            ) from None
        self.sent += 1
        self._buf = b""

    def receive(self) -> bytes | None:
        """Read what clamd sent: the reply without its number (``\\0`` kept, as replies.py
        expects), or None while it is incomplete. BackendFailure on EOF, error or a reply that
        is not for the command sent."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError as e:
            raise BackendFailure(
                f"connection failed while waiting for the verdict: {e.strerror or e}"
            ) from None
        if not data:
            if self._buf:
                shown = self._buf[:80].decode("utf-8", "replace")
                raise BackendFailure(f"clamd closed the connection mid-reply: {shown!r}")
            raise BackendFailure("clamd closed the connection without a reply")
        buf = self._buf + data
        if not buf.endswith(b"\0"):
            self._buf = buf
            return None
        self._buf = b""
        self.answered += 1
        number, sep, reply = buf.partition(b": ")
        if not sep or number != b"%d" % self.sent:
            shown = buf[:80].decode("utf-8", "replace")
            raise BackendFailure(f"unexpected reply in a clamd session: {shown!r}")
        return reply

    def close(self) -> None:
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0


class SessionPool:
    """The idle sessions of one backend, last used first (its socket buffers are warm)."""

    __slots__ = ("address", "connect_timeout", "_idle")

    def __init__(self, address: str, connect_timeout: float) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self._idle: list[Session] = []

    def take(self, now: float) -> Session:
        """An idle session, or a new one (BackendFailure when clamd cannot be reached)."""
        idle = self._idle
        while idle:
            session = idle.pop()
            if now - session.idle_since < IDLE_MAX:
                return session
            session.close()
        return self.connect()

    def connect(self) -> Session:
        session = Session(self.address, self.connect_timeout)
        session.pool = self
        return session

    def give_back(self, session: Session, now: float) -> None:
        session.reused = True
        session.idle_since = now
        self._idle.append(session)

    def close(self) -> list[Session]:
        """Close every idle session (a reload, a stop); the ones closed."""
        closed = self._idle
        self._idle = []
        for session in closed:
            session.close()
        return closed

    def expire(self, now: float) -> list[Session]:
        """Close sessions idle longer than IDLE_MAX (they are at the front: oldest first)."""
        idle, closed = self._idle, []
        while idle and now - idle[0].idle_since >= IDLE_MAX:
            closed.append(idle.pop(0))
            closed[-1].close()
        return closed

    def discard(self, session: Session) -> None:
        """An idle session that clamd closed (the loop saw its EOF)."""
        if session in self._idle:
            self._idle.remove(session)
        session.close()
