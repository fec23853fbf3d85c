"""Moving infected messages into a quarantine Maildir, each keeping its flags.

Maildir, MH and loose files move by rename (maildir.Maildir.move_file). mbox messages are
delivered to the quarantine first and then cut out of the mbox under its locks (mbox.remove).
Each failure is a Problem for that message or mailbox; the others still move.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from avtool.mailbox import maildir, mbox, mh
from avtool.mailbox.locking import Busy
from avtool.mailbox.message import Message, Problem, read_head
from avtool.mailbox.walk import STDIN, why


@dataclass(frozen=True, slots=True)
class Moved:
    message: Message
    to: str


Victim = tuple[Message, str]  # the message and, for mbox, the digest of the bytes scanned


def open_quarantine(path: str) -> maildir.Maildir:
    """The quarantine Maildir, created if missing. OSError if it cannot be."""
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
    if m.format == "maildir":
        subdir, key, info = m.subdir, m.key, m.info
    elif m.format == "mh":
        subdir, info = maildir.placement(mh.maildir_flags(m.key, mh.sequences(m.mailbox)))
        key = ""
    else:
        subdir, key, info = "new", "", ""
    try:
        try:
            return Moved(m, dest.move_file(m.path, subdir, key, info))
        except FileNotFoundError:
            if m.format != "maildir":
                raise
            again = maildir.relocate(m)  # a reader renamed it (flags) since the scan
            if again is None:
                raise
            return Moved(again, dest.move_file(again.path, again.subdir, key, again.info))
    except OSError as e:
        return Problem(m.where, f"not moved: {why(e)}")


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
    except OSError as e:
        yield Problem(path, f"not moved: {why(e)}")
        return
    for message, where in done:
        yield Moved(message, where)
