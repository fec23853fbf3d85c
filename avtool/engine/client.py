"""The clamd wire protocol for one address, on top of the ``clamd`` package's client classes.

The package (1.0.2) has bugs that matter to a mail filter (docs/notes/clamav.md §3): connect()
before settimeout() (no connect timeout), send() instead of sendall(), 1 KiB INSTREAM chunks,
no FILDES, a greedy reply regex, and a socket stored on the instance (not thread-safe). These
subclasses keep its classes and attributes but replace every method that talks: each call opens
its own connection, bounded by a ``time.monotonic()`` deadline, so one instance serves any
number of threads. Replies are returned as raw bytes; replies.py interprets them.
"""

from __future__ import annotations

import abc
import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import NoReturn

import clamd

from avtool.engine.replies import SIZE_LIMIT, BackendFailure

# INSTREAM chunk: with 64 KiB-1 MiB chunks a message costs 0.24 ms of client CPU, with the clamd
# package's 1 KiB chunks 1.1 ms (notes 4).
CHUNK = 1 << 20
SMALL = 128 << 10  # up to this size INSTREAM copies through one buffer: fewer system calls
_INSTREAM = b"zINSTREAM\0"
_END = b"\0\0\0\0"  # a zero-length chunk ends the stream
_MORE = getattr(socket, "MSG_MORE", 0)  # TCP: hold a small header for the data that follows


class FileProblem(Exception):
    """The message itself could not be read (INSTREAM): no backend is to blame."""


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BackendFailure("timeout: no answer from clamd in time", timeout=True)
    return left


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _failure(e: OSError, what: str) -> BackendFailure:
    """A socket error while talking to clamd, as a BackendFailure (timeouts marked as such)."""
    if isinstance(e, TimeoutError):
        return BackendFailure(f"timeout: no answer from clamd while {what}", timeout=True)
    return BackendFailure(f"connection failed while {what}: {_why(e)}")


@contextlib.contextmanager
def _talking(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise _failure(e, what) from None


def recv_reply(s: socket.socket, deadline: float, *, until_eof: bool = False) -> bytes:
    """Read one ``\\0``-terminated reply (or, ``until_eof``, everything until clamd closes)."""
    chunks: list[bytes] = []
    while True:
        s.settimeout(_left(deadline))
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
        if not until_eof and b"\0" in data:
            break
    return b"".join(chunks)


class _Wire(abc.ABC):
    """The protocol, shared by the unix and TCP clients. Holds no socket between calls."""

    address: str
    connect_timeout: float

    @abc.abstractmethod
    def _connect(self, timeout: float) -> socket.socket:
        """A new connected socket (unix or TCP), within ``timeout`` seconds."""

    def _init_socket(self) -> None:
        # Every inherited clamd-package method goes through here and stores the socket on self,
        # which breaks with threads (notes 3: 38 of 800 calls lost). None of them may run.
        raise TypeError("use the avtool.engine.client methods, not the clamd package's")

    def _close_socket(self) -> None:  # noqa: B027 - deliberately empty, not abstract
        """Nothing is stored to close (the clamd package calls this in ``finally``)."""

    def open(self, deadline: float) -> socket.socket:
        """A connected socket; the connect bounded by connect_timeout and the deadline."""
        timeout = min(self.connect_timeout, _left(deadline))
        try:
            return self._connect(timeout)
        except TimeoutError:
            raise BackendFailure(
                f"timeout: could not connect within {timeout:g} s", timeout=True
            ) from None
        except OSError as e:
            raise BackendFailure(f"cannot connect: {_why(e)}") from None

    def command(self, cmd: str, deadline: float, *, until_eof: bool = False) -> bytes:
        """A plain command (PING, VERSION, RELOAD, STATS, SCAN /path, CONTSCAN /dir ...)."""
        s = self.open(deadline)
        with s, _talking(f"waiting for the reply to {cmd.split(' ', 1)[0]}"):
            s.settimeout(_left(deadline))
            s.sendall(b"z" + os.fsencode(cmd) + b"\0")
            return recv_reply(s, deadline, until_eof=until_eof)

    def scan(self, path: str, deadline: float) -> bytes:
        """SCAN by absolute path: clamd's own user must be able to read it (notes 2)."""
        return self.command(f"SCAN {path}", deadline)

    def contscan(self, path: str, deadline: float) -> list[bytes]:
        return self.command(f"CONTSCAN {path}", deadline, until_eof=True).split(b"\0")[:-1]

    def multiscan(self, path: str, deadline: float) -> list[bytes]:
        return self.command(f"MULTISCAN {path}", deadline, until_eof=True).split(b"\0")[:-1]

    def instream(self, fd: int, deadline: float, size: int) -> bytes:
        """Stream ``fd`` from offset 0, as many bytes as ``size`` (its fstat size) says.

        The caller's offset does not move (os.preadv / os.sendfile with explicit offsets), and
        memory stays O(chunk) whatever the size. A small message goes in one write, command and
        end marker included; a larger one goes by os.sendfile in 1 MiB chunks: no copy through
        Python (client CPU for 700 KB over loopback TCP 0.40 -> 0.31 ms; the rest is TCP).

        clamd answers a stream over StreamMaxLength with ``INSTREAM size limit exceeded. ERROR``
        and hangs up; a client still sending gets EPIPE, and the reply itself can be lost in
        the reset (notes 2 and pitfall 5). A dead clamd looks the same, so when no reply
        survives, PING tells them apart: answered means it was the size limit.
        """
        cut = False
        s = self.open(deadline)
        with s:
            with _talking("streaming the message"):
                try:
                    if size > SMALL:
                        _stream_sendfile(s, fd, deadline, size)
                    else:
                        _stream_buffered(s, fd, deadline, size)
                except (BrokenPipeError, ConnectionResetError):
                    cut = True  # clamd hung up: read what it said before
            with _talking("waiting for the verdict"):
                try:
                    reply = recv_reply(s, deadline)
                except ConnectionResetError:
                    if not cut:
                        raise
                    reply = b""
        if reply or not cut:
            return reply
        try:
            self.command("PING", deadline)
        except BackendFailure as e:
            raise BackendFailure(f"connection lost while streaming; then {e.reason}") from None
        return SIZE_LIMIT.encode() + b". ERROR\0"


def _stream_buffered(s: socket.socket, fd: int, deadline: float, size: int) -> None:
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
        s.settimeout(_left(deadline))
        s.sendall(view[:end])
        if last:
            return
        head = 0


def _stream_sendfile(s: socket.socket, fd: int, deadline: float, size: int) -> None:
    """INSTREAM by os.sendfile: the kernel copies from the page cache, Python sees no data."""
    s.settimeout(_left(deadline))
    s.sendall(_INSTREAM, _MORE)
    offset = 0
    while offset < size:
        end = offset + min(CHUNK, size - offset)
        s.settimeout(_left(deadline))
        s.sendall(struct.pack("!L", end - offset), _MORE)
        while offset < end:
            try:
                sent = os.sendfile(s.fileno(), fd, offset, end - offset)
            except BlockingIOError:  # the socket has a timeout, so it is non-blocking
                poll = select.poll()
                poll.register(s, select.POLLOUT)
                if not poll.poll(_left(deadline) * 1000):
                    raise TimeoutError from None
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise
            except OSError as e:
                _blame(fd, offset, e)
            if sent == 0:  # the chunk header promised more: the stream cannot be completed
                raise FileProblem("cannot read the message: it shrank while being scanned")
            offset += sent
    s.settimeout(_left(deadline))
    s.sendall(_END)


def _blame(fd: int, offset: int, error: OSError) -> NoReturn:
    """os.sendfile failed: FileProblem if the file is at fault, else re-raise (the socket)."""
    try:
        os.pread(fd, 1, offset)
    except OSError as e:
        raise FileProblem(f"cannot read the message: {_why(e)}") from None
    raise error


class UnixClient(_Wire, clamd.ClamdUnixSocket):  # type: ignore[misc]
    """clamd on a unix socket: also FILDES."""

    def __init__(self, path: str, connect_timeout: float) -> None:
        super().__init__(path=path, timeout=connect_timeout)
        self.address = path
        self.connect_timeout = connect_timeout

    def _connect(self, timeout: float) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)  # before connect(): the clamd package does it after
            s.connect(self.address)
        except BaseException:
            s.close()
            raise
        return s

    def fildes(self, fd: int, deadline: float) -> bytes:
        """Pass the open file to clamd: no copy, and clamd needs no right to the path.

        The command and the descriptor go in two writes: with the fd in the same sendmsg clamd
        says ``PROTOCOL ERROR: ancillary data sent without FILDES`` (notes 2). clamd's copy
        shares the file offset and leaves it at 0 (measured: 10 before, 0 after), so it is put
        back once clamd has answered (and is done with the file).
        """
        try:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            offset = -1  # not seekable: nothing to restore
        s = self.open(deadline)
        try:  # the hot path: plain try/except rather than _talking
            with s:
                try:
                    s.settimeout(_left(deadline))
                    s.sendall(b"zFILDES\0")
                    socket.send_fds(s, [b"\0"], [fd])
                except OSError as e:
                    raise _failure(e, "passing the file descriptor") from None
                try:
                    return recv_reply(s, deadline)
                except OSError as e:
                    raise _failure(e, "waiting for the verdict") from None
        finally:
            if offset >= 0:
                with contextlib.suppress(OSError):
                    os.lseek(fd, offset, os.SEEK_SET)


class TcpClient(_Wire, clamd.ClamdNetworkSocket):  # type: ignore[misc]
    """clamd on ``host:port`` or ``[v6]:port``: INSTREAM, SCAN and commands; no FILDES."""

    def __init__(self, address: str, connect_timeout: float) -> None:
        host, _, port = address.rpartition(":")
        super().__init__(host=host.strip("[]"), port=int(port), timeout=connect_timeout)
        self.address = address
        self.connect_timeout = connect_timeout

    def _connect(self, timeout: float) -> socket.socket:
        # create_connection sets the timeout before connecting, and tries every address.
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        # The end marker and command are small writes after big ones: no Nagle delay.
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
