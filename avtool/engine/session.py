"""Every byte avtool exchanges with clamd: connect, FILDES, INSTREAM, commands, replies.

Two shapes of connection. The daemon's loop (avtool/daemon/loop.py) scans with FILDES over
kept-open IDSESSION connections: per message a plain FILDES costs a connect, clamd's accept and
a close on both sides; in a session (``zIDSESSION``, clamd/session.c) the connection stays and
each command is answered as ``<n>: <reply>\\0``, n counting the commands from 1 (measured:
``1: fd[11]: OK``). The byte that carries the descriptor (sendmsg needs one) is read by clamd
as an empty command and ignored (measured: no reply, and the next command answers with the
next number). The blocking driver (``Engine.scan``, for TCP, INSTREAM and SCAN) opens a plain
connection per attempt (``idsession=False``): one command, one reply, closed.

One scan at a time per session, so the number says which command a reply belongs to without a
table: a reply with another number is a protocol failure. clamd ends a session that sent
nothing for its ReadTimeout (clamd.conf(5): 120 s by default, 180 in Debian's clamd.conf) with
``COMMAND READ TIMED OUT`` and a close (measured); a RELOAD does not end one, and its next scan
uses the new database (measured). A closed idle session shows up as EOF or EPIPE at its next
use, which is no fault of clamd: the failover machine (failover.py) goes again once on a new
connection (``reused``, ``stale``). Sessions idle longer than IDLE_MAX are closed before clamd
would. After the send the sockets are non-blocking: their owner waits for them (epoll in the
loop, poll in Engine.scan) and calls ``receive`` when they are readable.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from typing import NoReturn

from avtool.engine.replies import BackendFailure, FileProblem

IDLE_MAX = 20.0  # seconds: closed by us well before clamd's ReadTimeout
# FILDES and the descriptor in one write: the command, then one more byte that carries the fd
# (clamd's own test suite sends it so, check_clamd.c ``sendmsg_fd(..., singlemsg=1)``). With
# the fd on the command's own bytes clamd answers "ancillary data sent without FILDES".
_FILDES = [b"zFILDES\0\0"]
# INSTREAM chunk: with 64 KiB-1 MiB chunks a message costs 0.24 ms of client CPU, with the clamd
# package's 1 KiB chunks 1.1 ms (notes 4).
CHUNK = 1 << 20
SMALL = 128 << 10  # up to this size INSTREAM copies through one buffer: fewer system calls
_INSTREAM = b"zINSTREAM\0"
_END = b"\0\0\0\0"  # a zero-length chunk ends the stream
_MORE = getattr(socket, "MSG_MORE", 0)  # TCP: hold a small header for the data that follows


def left(deadline: float) -> float:
    """Seconds until ``deadline``; BackendFailure (a timeout) once it has passed."""
    rest = deadline - time.monotonic()
    if rest <= 0:
        raise BackendFailure("timeout: no answer from clamd in time", timeout=True)
    return rest


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _failure(e: OSError, what: str) -> BackendFailure:
    """A socket error while talking to clamd, as a BackendFailure (timeouts marked as such)."""
    if isinstance(e, TimeoutError):
        return BackendFailure(f"timeout: no answer from clamd while {what}", timeout=True)
    return BackendFailure(f"connection failed while {what}: {_why(e)}")


def connect(address: str, timeout: float) -> socket.socket:
    """A blocking socket connected to ``address`` (a unix path, ``host:port`` or ``[v6]:port``)
    within ``timeout`` seconds (set before connect(): the clamd package sets it after);
    BackendFailure when clamd cannot be reached."""
    try:
        if address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
            return sock
        host, _, port = address.rpartition(":")
        # create_connection sets the timeout before connecting, and tries every address.
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        # The end marker and command are small writes after big ones: no Nagle delay.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except TimeoutError:
        raise BackendFailure(
            f"timeout: could not connect within {timeout:g} s", timeout=True
        ) from None
    except OSError as e:
        raise BackendFailure(f"cannot connect: {_why(e)}") from None


def read_reply(sock: socket.socket, deadline: float, *, until_eof: bool = False) -> bytes:
    """Read one ``\\0``-terminated reply (or, ``until_eof``, everything until clamd closes),
    blocking until ``deadline``. OSError is the caller's to describe."""
    chunks: list[bytes] = []
    while True:
        sock.settimeout(left(deadline))
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        if not until_eof and b"\0" in data:
            break
    return b"".join(chunks)


def command(
    address: str, connect_timeout: float, cmd: str, deadline: float, *, until_eof: bool = False
) -> bytes:
    """A plain command (PING, VERSION, RELOAD, STATS, MULTISCAN /dir ...) on a connection of its
    own: the raw reply, or BackendFailure."""
    sock = connect(address, min(connect_timeout, left(deadline)))
    with sock:
        try:
            sock.settimeout(left(deadline))
            sock.sendall(b"z" + os.fsencode(cmd) + b"\0")
            return read_reply(sock, deadline, until_eof=until_eof)
        except OSError as e:
            raise _failure(e, f"waiting for the reply to {cmd.split(' ', 1)[0]}") from None


class Session:
    """One connection to clamd: an IDSESSION (the loop's, kept) or a plain one (one scan)."""

    __slots__ = (
        "address", "sock", "fd", "sent", "answered", "reused", "idle_since", "watched", "pool",
        "idsession", "cut", "_buf",
    )  # fmt: skip

    def __init__(self, address: str, connect_timeout: float, *, idsession: bool = True) -> None:
        self.address = address
        # A unix connect blocks only while clamd's backlog is full (a clamd in trouble),
        # and sessions are kept: few connects, each bounded.
        sock = connect(address, connect_timeout)
        if idsession:
            try:
                sock.sendall(b"zIDSESSION\0")
            except OSError as e:
                sock.close()
                raise _failure(e, "opening a session") from None
            sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.idsession = idsession
        self.sent = 0  # commands sent; the reply to the last one carries this number
        self.answered = 0
        self.reused = False  # has answered before: a failure may just mean clamd closed it
        self.idle_since = 0.0
        self.watched = False  # registered with the loop's epoll (it stays while idle)
        self.pool: SessionPool | None = None  # the pool it goes back to
        self.cut = False  # clamd hung up while INSTREAM was sending (its size limit?)
        self._buf = b""

    @property
    def stale(self) -> bool:
        """Used before and the reply to the last command never came: clamd may just have
        ended the idle session (its ReadTimeout) as it was used, no fault of clamd."""
        return self.reused and self.answered < self.sent

    @property
    def heard(self) -> bool:
        """Some of the reply to the last command has come."""
        return self.answered == self.sent or bool(self._buf)

    def send_fildes(self, fd: int) -> None:
        """Send FILDES and the descriptor in one sendmsg (``_FILDES``: one system call instead
        of two, notes 2); BackendFailure if the connection is gone."""
        try:
            sent = socket.send_fds(self.sock, _FILDES, [fd])
        except OSError as e:  # BlockingIOError too: nothing is queued on an idle session
            raise BackendFailure(
                f"connection failed while passing the file descriptor: {_why(e)}"
            ) from None
        if sent != len(_FILDES[0]):  # 9 bytes into an idle socket: never seen short
            raise BackendFailure(f"clamd took {sent} of the 9 bytes of FILDES")
        self._sent()

    def send_command(self, cmd: str, deadline: float) -> None:
        """Send ``cmd`` (``SCAN /path``) on a plain connection, by ``deadline``."""
        try:
            self.sock.settimeout(left(deadline))
            self.sock.sendall(b"z" + os.fsencode(cmd) + b"\0")
        except OSError as e:
            raise _failure(e, f"sending {cmd.split(' ', 1)[0]}") from None
        self._sent()

    def send_instream(self, fd: int, size: int, deadline: float) -> None:
        """Stream ``fd`` from offset 0, as many bytes as ``size`` (its fstat size) says.

        The caller's offset does not move (os.preadv / os.sendfile with explicit offsets), and
        memory stays O(chunk) whatever the size. A small message goes in one write, command and
        end marker included; a larger one goes by os.sendfile in 1 MiB chunks: no copy through
        Python (client CPU for 700 KB over loopback TCP 0.40 -> 0.31 ms; the rest is TCP).

        clamd answers a stream over StreamMaxLength with ``INSTREAM size limit exceeded. ERROR``
        and hangs up; a client still sending gets EPIPE, and the reply itself can be lost in
        the reset (notes 2 and pitfall 5): ``cut`` is set and the reply is read all the same.
        FileProblem when the message cannot be read.
        """
        sock = self.sock
        try:
            if size > SMALL:
                _stream_sendfile(sock, fd, deadline, size)
            else:
                _stream_buffered(sock, fd, deadline, size)
        except (BrokenPipeError, ConnectionResetError):
            self.cut = True  # clamd hung up: read what it said before
        except OSError as e:
            raise _failure(e, "streaming the message") from None
        self._sent()

    def _sent(self) -> None:
        self.sent += 1
        self._buf = b""
        if not self.idsession:
            self.sock.setblocking(False)

    def receive(self) -> bytes | None:
        """Read what clamd sent: the reply (without its number in a session; ``\\0`` kept, as
        replies.py expects), or None while it is incomplete. BackendFailure on EOF, error or a
        reply that is not for the command sent."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError as e:
            raise BackendFailure(
                f"connection failed while waiting for the verdict: {_why(e)}"
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
        if not self.idsession:
            return buf
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


def _stream_buffered(sock: socket.socket, fd: int, deadline: float, size: int) -> None:
    """INSTREAM through one buffer (command, chunk header, data, end marker in one write when
    it fits). Also the way for what os.sendfile cannot read (a size of 0: pipes, devices)."""
    room = min(CHUNK, size) if size > 0 else 64 << 10
    buf = bytearray(len(_INSTREAM) + 4 + room + 4)
    view = memoryview(buf)
    view[: len(_INSTREAM)] = _INSTREAM
    head, offset = len(_INSTREAM), 0
    while True:
        try:
            n = os.preadv(fd, [view[head + 4 : head + 4 + room]], offset)
        except OSError as e:
            raise FileProblem(f"cannot read the message: {_why(e)}") from None
        offset += n
        end = head
        if n:
            struct.pack_into("!L", buf, head, n)
            end = head + 4 + n
        last = n == 0 or (size > 0 and offset >= size)
        if last:
            view[end : end + 4] = _END
            end += 4
        sock.settimeout(left(deadline))
        sock.sendall(view[:end])
        if last:
            return
        head = 0


def _stream_sendfile(sock: socket.socket, fd: int, deadline: float, size: int) -> None:
    """INSTREAM by os.sendfile: the kernel copies from the page cache, Python sees no data."""
    sock.settimeout(left(deadline))
    sock.sendall(_INSTREAM, _MORE)
    offset = 0
    while offset < size:
        end = offset + min(CHUNK, size - offset)
        sock.settimeout(left(deadline))
        sock.sendall(struct.pack("!L", end - offset), _MORE)
        while offset < end:
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, end - offset)
            except BlockingIOError:  # the socket has a timeout, so it is non-blocking
                poll = select.poll()
                poll.register(sock, select.POLLOUT)
                if not poll.poll(left(deadline) * 1000):
                    raise TimeoutError from None
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise
            except OSError as e:
                _blame(fd, offset, e)
            if sent == 0:  # the chunk header promised more: the stream cannot be completed
                raise FileProblem("cannot read the message: it shrank while being scanned")
            offset += sent
    sock.settimeout(left(deadline))
    sock.sendall(_END)


def _blame(fd: int, offset: int, error: OSError) -> NoReturn:
    """os.sendfile failed: FileProblem if the file is at fault, else re-raise (the socket)."""
    try:
        os.pread(fd, 1, offset)
    except OSError as e:
        raise FileProblem(f"cannot read the message: {_why(e)}") from None
    raise error


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
