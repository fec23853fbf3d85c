"""Taking an infected message out of a user's mailbox into the quarantine store (origin
"mailbox"), so that ``avtool quarantine release`` can put it back where it was (putback.py).

Root runs this (``avtool rescan --quarantine``) over mailboxes that users own and may change
while it runs. "As the mailbox's owner" here means: root reads and removes in the owner's
mailbox only through descriptors opened component by component without following a name the
owner controls (safedir.py), and acts only on the inode that was scanned (st_dev, st_ino):
whatever the owner renames, links or swaps, root touches nothing the owner could not touch
through that mailbox (design.md, "Privileges"). The same code as ``scan --move-to``
(scan/mailbox/quarantine.py) finds the file again; an mbox message is cut out under the mbox's
locks by mbox.remove.

The message's bytes are *copied* into a new ``data`` file of a new entry, never linked: an
inode of the owner's (or one the owner hard-linked from elsewhere) never becomes part of the
store, and the store's chown below can only ever touch files this code created (O_EXCL,
O_NOFOLLOW). Order, so that nothing is lost: the entry is written and fsynced whole, then
handed to the store's owner (the daemon's user, so that it can list and delete it: fchown
through the descriptors, modes stay 0700/0600), then the message's name is removed if it
still names the inode scanned; on any failure before that the entry is removed again and the
message stays where it was. A crash in between leaves a copy in both places, never in none.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from avtool import safedir
from avtool.scan.mailbox import mbox, mh, quota
from avtool.scan.mailbox.locking import Busy
from avtool.scan.mailbox.maildir import copy_range
from avtool.scan.mailbox.message import Message, Problem, read_head
from avtool.scan.mailbox.quarantine import LEFT, Replaced, open_scanned
from avtool.scan.mailbox.walk import STDIN, why

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
ORIGIN = "mailbox"


@dataclass(frozen=True)
class Found:
    """An infected message as the scan left it: ``message`` carries the inode scanned (and
    for mbox its range); ``digest`` is the SHA-256 of an mbox message's bytes scanned."""

    message: Message
    names: tuple[str, ...]
    digest: str = ""


@dataclass(frozen=True)
class Taken:
    found: Found  # as given to take()
    ident: str  # the quarantine id


class StoreWriter:
    """The quarantine directory, opened once without following a name another user controls
    (safedir.open_dir: the daemon's user owns it and /var/lib/avtool, so a link either of them
    planted is refused). Entries are made through its descriptor and given to its owner."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = safedir.open_dir(path)  # OSError / Unsafe: the caller says why
        st = os.fstat(self.fd)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            os.close(self.fd)
            raise safedir.Unsafe(
                f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): refused"
            )
        self.uid, self.gid = st.st_uid, st.st_gid

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, src: int, offset: int, size: int, info: dict[str, Any], mtime_ns: int) -> str:
        """A new entry holding ``size`` bytes at ``offset`` of ``src`` and ``info`` as its
        verdict.json, durable and owned by the store's owner; its id."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        ident = _mkdir(self.fd, stamp)
        try:
            entry = os.open(ident, _DIR, dir_fd=self.fd)
            try:
                if os.fstat(entry).st_uid != os.geteuid():  # swapped before we opened it
                    raise OSError(errno.EEXIST, "the new entry was replaced meanwhile", ident)
                data = _create(entry, "data")
                try:
                    copy_range(src, data, offset, size)
                    os.utime(data, ns=(mtime_ns, mtime_ns))  # readers show it as the date
                    self._hand_over(data)
                finally:
                    os.close(data)
                verdict = _create(entry, "verdict.json")
                try:
                    body = json.dumps({**info, "time": stamp}, indent=1).encode()
                    _write_all(verdict, body)
                    self._hand_over(verdict)
                finally:
                    os.close(verdict)
                self._hand_over(entry, 0o700)
            finally:
                os.close(entry)
            os.fsync(self.fd)
        except BaseException:
            self.remove(ident)
            raise
        return ident

    def _hand_over(self, fd: int, mode: int = 0o600) -> None:
        """fsync, then give the file to the store's owner (the daemon's user): it lists and
        deletes what root put here. Only files this code created reach here."""
        os.fchown(fd, self.uid, self.gid)
        os.fchmod(fd, mode)
        os.fsync(fd)

    def remove(self, ident: str) -> None:
        """Undo ``add`` (rmtree with a dir fd never follows a link: shutil docs)."""
        import shutil

        with contextlib.suppress(OSError):
            shutil.rmtree(ident, dir_fd=self.fd)


def _mkdir(store: int, stamp: str) -> str:
    for _ in range(16):
        ident = f"{stamp}-rescan.{secrets.token_hex(6)}"
        try:
            os.mkdir(ident, 0o700, dir_fd=store)
        except FileExistsError:
            continue
        return ident
    raise OSError(errno.EEXIST, "no free entry name", stamp)


def _create(dir_fd: int, name: str) -> int:
    return os.open(name, _NEW, 0o600, dir_fd=dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def take(
    store: StoreWriter, found: Sequence[Found], *, lock_timeout: float
) -> Iterator[Taken | Problem]:
    """Move every message of ``found`` into ``store``; mbox messages of one mbox in one
    rewrite. A message that cannot be moved so is a Problem and stays where it was."""
    by_mbox: dict[str, list[Found]] = {}
    for f in found:
        if f.message.path == STDIN:
            yield Problem(STDIN, "not quarantined: standard input is not a mailbox", error=False)
        elif f.message.format == "mbox":
            by_mbox.setdefault(f.message.path, []).append(f)
        else:
            yield _take_file(store, f)
    for path, group in by_mbox.items():
        yield from _take_mbox(store, path, group, lock_timeout)


def _take_file(store: StoreWriter, f: Found) -> Taken | Problem:
    m = f.message
    try:
        if m.ino == 0:
            raise Replaced("not scanned from a file")
        dir_fd, name, fd, m = open_scanned(m)
        try:
            st = os.fstat(fd)
            owner = _owner(m, dir_fd, st)
            info = describe(m, f.names, fd, 0, st.st_size, owner, _name_in(m, name))
            if m.format == "mh":  # restored on release (putback.py)
                seqs = mh.sequences(m.mailbox, dir_fd=dir_fd)
                info["mailbox"]["sequences"] = mh.member_of(m.key, seqs)
            ident = store.add(fd, 0, st.st_size, info, st.st_mtime_ns)
            try:
                now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise Replaced("its name was given to another file during the move")
                os.unlink(name, dir_fd=dir_fd)
            except BaseException:
                store.remove(ident)  # undo: the message stays where it was, and only there
                raise
            with contextlib.suppress(OSError):
                os.fsync(dir_fd)
            if m.format == "maildir":
                quota.left(dir_fd, m.mailbox, name, st.st_size, owner[0])
            return Taken(f, ident)
        finally:
            os.close(fd)
            os.close(dir_fd)
    except (safedir.Unsafe, Replaced) as e:
        return Problem(m.where, f"not quarantined: {e}; {LEFT}")
    except OSError as e:
        return Problem(m.where, f"not quarantined: {why(e)}; {LEFT}")


def _owner(m: Message, dir_fd: int, st: os.stat_result) -> tuple[int, int]:
    """Whose mailbox it is: for Maildir and MH the owner of the directory the message is in
    (``cur/``, ``new/``, the MH folder: open as ``dir_fd``), for a loose file its own."""
    if m.format in ("maildir", "mh"):
        st = os.fstat(dir_fd)
    return st.st_uid, st.st_gid


def _name_in(m: Message, name: str) -> str | None:
    if m.format == "maildir":
        return f"{m.subdir}/{name}"
    return None if m.format == "mbox" else name


def _take_mbox(
    store: StoreWriter, path: str, group: list[Found], lock_timeout: float
) -> Iterator[Taken | Problem]:
    by_message = {f.message: f for f in group}

    def deliver(fd: int, m: Message) -> str:
        st = os.fstat(fd)
        info = describe(m, by_message[m].names, fd, m.offset, m.size, (st.st_uid, st.st_gid))
        info["mailbox"]["from_line"] = os.pread(fd, m.offset - m.start, m.start).decode("latin-1")
        return store.add(fd, m.offset, m.size, info, time.time_ns())

    try:
        done = mbox.remove(
            path, [(f.message, f.digest) for f in group], deliver, store.remove,
            lock_timeout=lock_timeout,
        )  # fmt: skip
    except (Busy, mbox.Changed) as e:
        yield Problem(path, f"not quarantined: {e}")
        return
    except safedir.Unsafe as e:
        yield Problem(path, f"not quarantined: {e}; {LEFT}")
        return
    except OSError as e:
        yield Problem(path, f"not quarantined: {why(e)}")
        return
    for message, ident in done:
        yield Taken(by_message[message], ident)


def describe(
    m: Message,
    names: Sequence[str],
    fd: int,
    offset: int,
    size: int,
    owner: tuple[int, int],
    name: str | None = None,
) -> dict[str, Any]:
    """verdict.json for a mailbox entry (the shared contract: the daemon's keys, ``origin``
    "mailbox" and where it was). The envelope is what delivery left in the header: the sender
    from Return-Path, the recipients from Delivered-To, else the mailbox owner's name."""
    head = BytesHeaderParser(policy=compat32).parsebytes(read_head(fd, offset, size))
    sender = _field(head.get("Return-Path"))
    if sender is not None:
        sender = sender.strip().removeprefix("<").removesuffix(">")
    recipients = [v for r in head.get_all("Delivered-To") or [] if (v := _field(r))]
    uid, gid = owner
    if not recipients:
        with contextlib.suppress(KeyError):
            recipients = [pwd.getpwuid(uid).pw_name]
    shown = " ".join(names)
    return {
        "verdict": "Infected",
        "names": list(names),
        "reason": f"infected: {shown} (found in a mailbox by avtool rescan)",
        "sender": sender,
        "recipients": recipients,
        "message_id": _field(head.get("Message-ID")),
        "subject": _field(head.get("Subject")),
        "backend": None,
        "origin": ORIGIN,
        "mailbox": {
            "path": m.mailbox,
            "kind": m.format,
            "name": name,
            "uid": uid,
            "gid": gid,
        },
    }


def _field(value: object) -> str | None:
    return None if value is None else " ".join(str(value).split())
