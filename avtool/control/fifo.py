"""The answers pipe: the client makes it and reads it, the daemon writes its answer into it.

The client side, one request at a time, and stale pipes:

- The pipe is made under a private name (``.NAME.PID.tmp``), opened for reading (non-blocking,
  never through a symlink), **flock()ed**, given to the daemon's user, and only then hard-linked
  to its real name. ``link()`` fails if the name exists, so two clients never share a pipe, and
  a pipe is locked for as long as it carries its name: the client unlinks it before closing.
- An existing pipe means another request, unless nobody holds its lock: the kernel drops a lock
  when its holder dies, so a pipe whose lock can be taken was left by a client that was killed.
  That one is removed with a warning and the request goes on. No age test is needed (an age
  test would refuse for a while after a crash, or take over a slow request that is still alive).
- Permissions (avfilter_sig's "minimal permissions"): 0600 and owned by the daemon's user when
  run as root (the daemon writes as owner; a later client run as that user, e.g. freshclam's
  sudo, can still lock and clean it); 0600 when run as the daemon's user; else 0620 with the
  daemon's group. The daemon's ids come from /proc/PID/status, else group ``courier``.
- The read end is open before the signal is sent, so the daemon's non-blocking open succeeds; a
  write end of our own keeps reads from seeing EOF until the daemon has written. Once it has, that
  end is closed, and EOF without an ``END`` line means the answer was cut short. The wait is
  bounded by the timeout, and ends early if the daemon process goes away.

The daemon side (``Answer``) writes only to a fifo that a reader holds open, never through a
symlink nor in a directory others can write; with no reader its answer goes to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import select
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from avtool.control.pidfile import alive, process_ids, unsafe_dir
from avtool.control.wire import END_ERROR, END_OK, Busy, End, Response, SigError

DEBUG_PIPE = "avtool_sig.pipe"  # with serve --debug and sig -p: in the current directory
LIVENESS_S = 1.0  # how often the wait checks that the daemon still runs
MAX_LINE = 1 << 20


# ---- the daemon's end ---------------------------------------------------------------------------
class Answer:
    """Where the daemon writes one answer: the fifo when someone waits on it, else stderr."""

    def __init__(self, pipe: Path | None) -> None:
        self.stream: TextIO = sys.stderr
        self.to_pipe = False
        if pipe is not None:
            f = open_fifo_for_writing(pipe)
            if f is not None:
                self.stream, self.to_pipe = f, True

    def line(self, text: str) -> None:
        prefix = "" if self.to_pipe else "avtool: "
        with contextlib.suppress(OSError):
            self.stream.write(prefix + text.replace("\n", " ") + "\n")
            self.stream.flush()

    def finish(self, ok: bool) -> None:
        if self.to_pipe:
            self.line(END_OK if ok else END_ERROR)
            with contextlib.suppress(OSError):
                self.stream.close()
            self.to_pipe = False
            self.stream = sys.stderr


def open_fifo_for_writing(path: Path) -> TextIO | None:
    """Open an existing fifo that a reader holds open; None when there is none. Never follows a
    symlink, never writes to anything but a fifo, nor to one in a dir others can write."""
    if unsafe_dir(path) is not None:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENXIO, errno.ELOOP, errno.EACCES):
            return None
        raise
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "w", encoding="utf-8", errors="replace")


# ---- the client's end ---------------------------------------------------------------------------
@dataclasses.dataclass
class Fds:
    read: int
    keep: int | None  # our write end, closed once the daemon writes

    def release_keep(self) -> None:
        if self.keep is not None:
            os.close(self.keep)
            self.keep = None


@contextlib.contextmanager
def answers_pipe(pipe: Path, daemon_pid: int, warn: list[str]) -> Iterator[Fds]:
    """The pipe, made, locked, given to ``daemon_pid``'s user and named ``pipe`` (module
    docstring); removed on exit. Warnings (a stale pipe removed) are appended to ``warn``."""
    daemon_uid = process_ids(daemon_pid)[0]
    problem = unsafe_dir(pipe, () if daemon_uid is None else (daemon_uid,))
    if problem is not None:
        raise SigError(f"{pipe}: refusing to create the answers pipe: {problem}", 2)
    temp = pipe.with_name(f".{pipe.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by a killed client that had our pid
    try:
        os.mkfifo(temp, 0o600)
    except OSError as e:
        raise SigError(f"{pipe}: cannot create the answers pipe: {e.strerror}", 2) from e
    fds = Fds(-1, None)
    try:
        fds.read = os.open(temp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fds.read)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
            raise SigError(f"{temp}: replaced while being created", 2)
        fcntl.flock(fds.read, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: nobody else has it yet
        fds.keep = os.open(temp, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        _grant(fds.read, daemon_pid)
        _install(temp, pipe, warn)
        os.unlink(temp)
        try:
            yield fds
        finally:
            remove_if_ours(pipe, st)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        for fd in (fds.keep, fds.read):
            if fd is not None and fd >= 0:
                os.close(fd)


def _grant(fd: int, pid: int) -> None:
    """Let the daemon write the pipe, and nobody else more than needed (module docstring)."""
    uid, gid = process_ids(pid)
    euid = os.geteuid()
    if uid is not None and uid == euid:
        os.fchmod(fd, 0o600)
    elif uid is not None and euid == 0:
        os.fchown(fd, uid, gid if gid is not None else -1)
        os.fchmod(fd, 0o600)
    else:
        if gid is not None:
            with contextlib.suppress(PermissionError):  # only to a group we are in
                os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o620)


def _install(temp: Path, pipe: Path, warn: list[str]) -> None:
    """Give the locked pipe its name; a stale pipe in the way is removed once, a live one is
    another request (Busy)."""
    for attempt in range(2):
        try:
            os.link(temp, pipe)
            return
        except FileExistsError:
            if attempt == 0 and _remove_stale(pipe, warn):
                continue
            raise Busy(f"{pipe}: another avtool sig request is in progress") from None
        except OSError as e:
            raise SigError(f"{pipe}: cannot create the answers pipe: {e.strerror}", 2) from e


def _remove_stale(pipe: Path, warn: list[str]) -> bool:
    """True when ``pipe`` was stale (nobody holds its lock) and is now gone."""
    try:
        fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # its client just finished
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Busy(f"{pipe} is a symlink, not an answers pipe: remove it") from None
        raise Busy(
            f"{pipe} exists and this user cannot check it ({e.strerror}): "
            "if no avtool sig is running, remove it"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            raise Busy(f"{pipe} exists and is not a pipe: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its client is alive: busy
        age = max(0.0, time.time() - st.st_mtime)
        if remove_if_ours(pipe, st):
            warn.append(f"{pipe}: removed a stale pipe ({age:.0f} s old; its client is gone)")
        return True
    finally:
        os.close(fd)


def remove_if_ours(pipe: Path, st: os.stat_result) -> bool:
    """Unlink ``pipe`` only if it still is the inode ``st`` (a lock holder's own)."""
    try:
        now = os.lstat(pipe)
    except FileNotFoundError:
        return False
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        return False
    os.unlink(pipe)
    return True


def read_answer(fds: Fds, pid: int, timeout: float) -> Response:
    """The daemon's lines up to its END line, or how the wait ended without one."""
    fd = fds.read
    until = time.monotonic() + timeout
    buf = b""
    lines: list[str] = []

    def answer(end: End) -> Response:
        return Response(tuple(lines), end)

    while True:
        left = until - time.monotonic()
        if left <= 0:
            return answer("timeout")
        ready, _, _ = select.select([fd], [], [], min(left, LIVENESS_S))
        if not ready:
            if not alive(pid):
                return answer("gone")
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            if buf:
                lines.append(buf.decode(errors="replace"))
            return answer("eof")
        fds.release_keep()  # the daemon holds the pipe now: its close is our EOF
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode(errors="replace")
            if line in (END_OK, END_ERROR):
                return answer("ok" if line == END_OK else "error")
            lines.append(line)
        if len(buf) > MAX_LINE:
            lines.append(buf[:200].decode(errors="replace") + "...")
            return answer("eof")
