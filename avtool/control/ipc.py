"""The daemon's pid file and the answers pipe, shared by ``avtool serve`` and ``avtool sig``.

The answers protocol (plain text lines, never pickle): ``avtool sig`` creates a fifo and sends a
signal; the daemon opens the fifo for writing, writes its answer as lines, then one last line
``END ok`` or ``END error``, and closes it. No fifo (or no reader): the answer goes to stderr.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from pathlib import Path
from typing import TextIO

from avtool.errors import DaemonError
from avtool.safedir import others_can_write

END_OK = "END ok"
END_ERROR = "END error"
DEBUG_PIPE = "avtool_sig.pipe"  # with serve --debug and sig -p: in the current directory


def unsafe_dir(path: Path, trusted: tuple[int, ...] = ()) -> str | None:
    """Why the directory holding ``path`` is no place for a pid file or the answers pipe, or
    None: others could put a file, link or fifo of their own under the name between our checks
    and our use (safedir.others_can_write, the rule ``scan --move-to`` uses too). ``trusted``:
    more owners to accept besides root and us (``sig`` accepts the daemon's user: it writes
    the answer anyway)."""
    parent = path.parent
    try:
        st = os.stat(parent)
    except OSError:
        return None  # creating the file fails then, with its own error
    return others_can_write(st, str(parent), trusted)


class PidFile:
    """A pid file created with O_EXCL|O_NOFOLLOW: never through a symlink, never over a live
    daemon's file, never in a directory that others can write (``unsafe_dir``). A stale one
    (its process gone) is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = False

    def create(self) -> None:
        problem = unsafe_dir(self.path)
        if problem is not None:
            raise DaemonError(f"{self.path}: refusing to write the pid file: {problem}")
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                owner = read_pid(self.path)
                if owner is not None and alive(owner):
                    msg = f"{self.path}: avtool is already running as pid {owner}"
                    raise DaemonError(msg) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # stale: its process is gone
                continue
            except OSError as e:
                raise DaemonError(f"{self.path}: cannot create pid file: {e.strerror}") from e
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.created = True
            return
        raise DaemonError(f"{self.path}: another process keeps creating this pid file")

    def remove(self) -> None:
        if self.created and read_pid(self.path) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.created = False


def read_pid(path: Path) -> int | None:
    found = read_pid_file(path)
    return None if found is None else found[0]


def read_pid_file(path: Path) -> tuple[int, int] | None:
    """The pid a pid file names and the uid that owns the file (read from the same open file:
    whoever wrote it vouches for it, and ``avtool sig`` as root acts only as that user)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        text = f.read(32).strip()
    return (int(text), st.st_uid) if text.isdigit() and int(text) > 0 else None


def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (a zombie passes kill -0: docs/notes/courier.md §7)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


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
