"""Locking an mbox the way Debian's mail programs do, before it is rewritten.

Debian Policy 11.6 (mail transport, delivery and user agents): mailbox programs must combine
fcntl() locking with dot locking, fcntl() first, or take both without blocking and start over
when one is busy. maildrop's lockmail(1) (dot lock + fcntl, measured with /proc/locks) and
liblockfile's maillock(3) do so. flock() is taken too: on Linux it is a separate lock from
fcntl (flock(2)), and some readers take only that one.

The dot lock ``MAILBOX.lock`` is made NFS-safe as liblockfile does: a unique temp file, link(2)
to the lock name, and a check of the link count. A lock file older than 5 minutes is stale and
removed (maillock(3): "if the lockfile is older then 5 minutes, it will be removed"). Without
write access to the directory the dot lock is skipped, as Python's mailbox does.

The dot lock is made, checked and removed through the descriptor of the mbox's directory
(``dir_fd``, never following a link): root locking a user's mbox must not create or remove a
file wherever that user points the directory's name (safedir.py). Every lock is tried without
blocking, so a lock held forever costs ``timeout`` seconds, never a hang.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import socket
import time
from collections.abc import Iterator

STALE = 300.0  # seconds: maillock(3)


class Busy(Exception):
    """Another program holds the mailbox lock past the timeout."""


@contextlib.contextmanager
def locked(dir_fd: int, name: str, fd: int, timeout: float) -> Iterator[None]:
    """Hold fcntl, flock and dot locks on the mbox ``name`` in the directory open as ``dir_fd``
    (the mbox open read-write as ``fd``) for the block.

    Each lock is tried without blocking; when one is busy all are released and the attempt
    starts over after a short random pause (Policy 11.6: no deadlock with programs that take
    them in another order), until ``timeout`` seconds have passed: then Busy.
    """
    end = time.monotonic() + timeout
    while True:
        held = _try_all(dir_fd, name, fd)
        if held is not None:
            break
        if time.monotonic() >= end:
            raise Busy(f"locked by another program for {timeout:g} s; not changed")
        time.sleep(min(random.uniform(0.05, 0.25), max(0.0, end - time.monotonic())))  # noqa: S311
    try:
        yield
    finally:
        _release(dir_fd, name, fd, dotlock=held)


def _try_all(dir_fd: int, name: str, fd: int) -> bool | None:
    """Take all three; None if one is busy (none held then), else whether a dot lock is held."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return None
        raise
    try:
        dotlock = _dotlock(dir_fd, name)
    except BaseException:
        _release(dir_fd, name, fd, dotlock=False)
        raise
    if dotlock is None:
        _release(dir_fd, name, fd, dotlock=False)
    return dotlock


def _dotlock(dir_fd: int, name: str) -> bool | None:
    """True: created; False: no write access to the directory (skipped); None: busy."""
    lock = name + ".lock"
    tmp = f"{lock}.{socket.gethostname()}.{os.getpid()}.{random.getrandbits(32):08x}"  # noqa: S311
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return False
        raise
    try:
        os.write(fd, f"{os.getpid()}\n".encode())  # liblockfile writes the pid too
        os.close(fd)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                os.link(tmp, lock, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                if not _remove_if_stale(dir_fd, lock):
                    return None
                continue
            # link(2) over NFS can succeed without the reply arriving: trust the link count.
            if os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False).st_nlink == 2:
                return True
            return None
        return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)


def _remove_if_stale(dir_fd: int, lock: str) -> bool:
    try:
        age = time.time() - os.stat(lock, dir_fd=dir_fd, follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return True  # gone meanwhile: try again
    if age < STALE:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock, dir_fd=dir_fd)
    return True


def _release(dir_fd: int, name: str, fd: int, *, dotlock: bool) -> None:
    if dotlock:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name + ".lock", dir_fd=dir_fd)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        fcntl.lockf(fd, fcntl.LOCK_UN)
