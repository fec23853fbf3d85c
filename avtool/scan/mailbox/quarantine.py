"""Moving infected messages into a quarantine Maildir, each keeping its flags.

Root runs this over mailboxes that users own and can change while it runs, so nothing here
follows a name that such a user controls (safedir.py): each mailbox directory is opened once
without following their links, and every open, link, rename and unlink goes through that
descriptor. Only the file that was scanned moves (the st_dev, st_ino the scan recorded).

Maildir, MH and loose files: the scanned file is opened by name in its directory, checked,
and its inode linked into the quarantine by descriptor (maildir.Maildir.take); the old name is
then removed only if it still names that inode. mbox messages are delivered to the quarantine
first and then cut out of the mbox under its locks (mbox.remove). A move that cannot be made
so is a Problem for that message or mailbox, and the message stays where it was; the others
still move.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from avtool.safedir import Unsafe, open_dir, open_parent, open_subdir
from avtool.scan.mailbox import maildir, mbox, mh, quota
from avtool.scan.mailbox.locking import Busy
from avtool.scan.mailbox.message import Message, Problem, read_head
from avtool.scan.mailbox.walk import STDIN, why

_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
LEFT = "left where it was"
_OTHER = "its name holds another file than the one scanned"


@dataclass(frozen=True, slots=True)
class Moved:
    message: Message
    to: str


Victim = tuple[Message, str]  # the message and, for mbox, the digest of the bytes scanned


class Replaced(Exception):
    """The name no longer holds the file that was scanned."""


def open_quarantine(path: str) -> maildir.Maildir:
    """The quarantine Maildir, created if missing. OSError if it cannot be, Unsafe if another
    user could write it or replace a directory on its path (maildir.Maildir)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", path)
    return maildir.Maildir(path)


def move(
    dest: maildir.Maildir, victims: Sequence[Victim], *, lock_timeout: float
) -> Iterator[Moved | Problem]:
    """Move every victim into ``dest``; mbox victims of one mailbox in one rewrite."""
    by_mbox: dict[str, list[Victim]] = {}
    for message, digest in victims:
        if message.path == STDIN:
            yield Problem(STDIN, "not moved: standard input is not a mailbox", error=False)
        elif message.format == "mbox":
            by_mbox.setdefault(message.path, []).append((message, digest))
        else:
            yield _move_file(dest, message)
    for path, group in by_mbox.items():
        yield from _move_mbox(dest, path, group, lock_timeout)


def _move_file(dest: maildir.Maildir, m: Message) -> Moved | Problem:
    try:
        if m.ino == 0:
            raise Replaced("not scanned from a file")
        dir_fd, name, fd, m = open_scanned(m)
        try:
            return Moved(m, _move_open(dest, m, dir_fd, name, fd))
        finally:
            os.close(fd)
            os.close(dir_fd)
    except (Unsafe, Replaced) as e:
        return Problem(m.where, f"not moved: {e}; {LEFT}")
    except OSError as e:
        return Problem(m.where, f"not moved: {why(e)}")


def _move_open(dest: maildir.Maildir, m: Message, dir_fd: int, name: str, fd: int) -> str:
    """Link the scanned file (open as ``fd``, named ``name`` in ``dir_fd``) into ``dest``, then
    remove the old name if it still names that file; else undo. Returns where it went."""
    if m.format == "maildir":
        subdir, key, info = m.subdir, m.key, m.info
    elif m.format == "mh":
        seqs = mh.sequences(m.mailbox, dir_fd=dir_fd)
        subdir, info = maildir.placement(mh.maildir_flags(m.key, seqs))
        key = ""
    else:
        subdir, key, info = "new", "", ""
    st = os.fstat(fd)
    to = dest.take(fd, st, subdir, key, info)
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise Replaced("its name was given to another file during the move")
        os.unlink(name, dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.remove(to)  # undo: the message stays where it was, and only there
        raise
    with contextlib.suppress(OSError):  # moved; a crash now can only leave a second copy
        os.fsync(dir_fd)
    if m.format == "maildir":
        quota.left(dir_fd, m.mailbox, name, st.st_size, os.fstat(dir_fd).st_uid)
    return to


def open_scanned(m: Message) -> tuple[int, str, int, Message]:
    """(its directory, its name, the file open, the message as found) for the file that was
    scanned; FileNotFoundError if it is gone, Replaced if its name holds another file. A
    Maildir message renamed by a reader since the scan (a flag change, or read: new/ to cur/)
    is found again by its unique name and inode."""
    if m.format == "file":
        dir_fd, name = open_parent(m.path)
    else:
        dir_fd, name = open_dir(m.mailbox), os.path.basename(m.path)
    try:
        if m.format != "maildir":
            fd = _open_if_scanned(dir_fd, name, m)
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), m.path)
            return dir_fd, name, fd, m
        found = _open_in_maildir(dir_fd, m)
    except BaseException:
        os.close(dir_fd)
        raise
    os.close(dir_fd)
    return found


def _open_in_maildir(folder: int, m: Message) -> tuple[int, str, int, Message]:
    replaced = False
    for sub in (m.subdir, *(s for s in maildir.SUBDIRS if s != m.subdir)):
        sub_fd = open_subdir(folder, sub, os.path.join(m.mailbox, sub))
        try:
            with os.scandir(sub_fd) as entries:
                names = [e.name for e in entries if e.name.partition(":")[0] == m.key]
            for name in names:
                try:
                    fd = _open_if_scanned(sub_fd, name, m)
                except Replaced:
                    replaced = True
                    continue
                if fd is not None:
                    info = name.partition(":")[2]
                    path = os.path.join(m.mailbox, sub, name)
                    return sub_fd, name, fd, replace(m, path=path, subdir=sub, info=info)
        except BaseException:
            os.close(sub_fd)
            raise
        os.close(sub_fd)
    if replaced:
        raise Replaced(_OTHER)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), m.path)


def _open_if_scanned(dir_fd: int, name: str, m: Message) -> int | None:
    """``name`` in ``dir_fd`` open, if it is the file that was scanned (st_dev, st_ino); None
    if there is no such name; Replaced if it names something else (never followed)."""
    try:
        fd = os.open(name, _FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Replaced(f"{name} is a symbolic link now") from None
        raise
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (m.dev, m.ino):
        return fd
    os.close(fd)
    raise Replaced(_OTHER)


def _move_mbox(
    dest: maildir.Maildir, path: str, group: list[Victim], lock_timeout: float
) -> Iterator[Moved | Problem]:
    def deliver(fd: int, m: Message) -> str:
        head = read_head(fd, m.offset, m.size)
        subdir, info = maildir.placement(mbox.maildir_flags(head), seen=mbox.is_old(head))
        return dest.add_range(fd, m.offset, m.size, subdir, info)

    try:
        done = mbox.remove(path, group, deliver, dest.remove, lock_timeout=lock_timeout)
    except (Busy, mbox.Changed) as e:
        yield Problem(path, f"not moved: {e}")
        return
    except Unsafe as e:
        yield Problem(path, f"not moved: {e}; {LEFT}")
        return
    except OSError as e:
        yield Problem(path, f"not moved: {why(e)}")
        return
    for message, where in done:
        yield Moved(message, where)
