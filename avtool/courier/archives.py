"""The members of a zip archive that clamd takes for mail, for unscannable.py.

clamd opens a zip archive in a message (an attachment, decoded) and scans its members; a member
that looks like mail to it is parsed as mail, and one whose own type is ``message/partial`` (or
another ``message/*`` it does not scan) is answered OK without a look, as at the top of a
message: by trial with ClamAV 1.4.6, a zip holding such an ``.eml`` with EICAR in its attachment
is answered OK, at the top, attached in base64, and in a zip in a zip (tests/support/evasion.py
FRAGMENTS ``eml_in_zip``...). So unscannable.py hands each zip it decodes to ``mail_members``,
which opens it with the stdlib and gives back the members that look like mail (``is_mail`` on
their first MAIL_HEAD bytes), whole, and those of the zips in it.

What cannot be read here is reported (Unreadable), and the message is then unchecked: clamd may
read what the stdlib cannot (a damaged archive, a compression method it lacks), and a bound
must not be a way through (too deep, too many members, too many bytes: a zip bomb). An
encrypted member is passed over: clamd cannot read it either. Other kinds of archive (rar, 7z,
tar, gzip) are not opened: not seen, as before.
"""

from __future__ import annotations

import io
import lzma
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

ZIP = b"PK\x03\x04"  # a local file header: the first bytes of a zip archive
MAX_ZIP_DEPTH = 3  # a zip in a zip in a zip
MAX_MEMBERS = 1_000  # in one archive
MAIL_HEAD = 2 << 10  # bytes of a member read to tell whether it looks like mail
# What the stdlib raises for an archive or member it cannot read: bz2 OSError, an odd header
# ValueError, a compression method it lacks or an encrypted member RuntimeError (whose subclass
# NotImplementedError is the method's)
BROKEN = (
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
    ValueError, RuntimeError,
)  # fmt: skip


class Unreadable(Exception):
    """The archive cannot be looked inside here: the reason, for an Unchecked verdict."""


class Budget(Protocol):
    """The bytes a message may still have decoded for its check (unscannable.py), shared by
    every part and archive of it: a zip bomb in each of many parts must not multiply it."""

    def room(self) -> int: ...

    def take(self, size: int) -> None: ...


def mail_members(data: bytes, is_mail: Callable[[bytes], bool], budget: Budget) -> Iterator[bytes]:
    """Each member of the zip ``data``, and of the zips in it, whose first bytes look like mail
    (``is_mail``), whole; every byte read from the archives is taken from ``budget``."""
    yield from _members(data, is_mail, budget, 0)


def _members(
    data: bytes, is_mail: Callable[[bytes], bool], budget: Budget, depth: int
) -> Iterator[bytes]:
    if depth >= MAX_ZIP_DEPTH:
        raise Unreadable("zip archives nested too deep to check")
    archive, members = open_zip(data)
    if len(members) > MAX_MEMBERS:
        raise Unreadable("too many zip members to check")
    for info in members:
        head = _read(archive, info, MAIL_HEAD, budget)
        if head.startswith(ZIP):
            inner = _read(archive, info, budget.room(), budget)
            yield from _members(inner, is_mail, budget, depth + 1)
        elif is_mail(head):
            yield _read(archive, info, budget.room(), budget)


def open_zip(data: bytes) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The zip ``data`` opened, and its members that hold data the stdlib may read: not
    directories, not encrypted (APPNOTE 4.4.4 bit 0: clamd cannot read those either).
    Unreadable when the archive itself cannot be read. Shared with engine/secondlook.py."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except BROKEN as e:
        raise Unreadable("a zip archive that cannot be read to check") from e
    return archive, [i for i in infos if not (i.is_dir() or i.flag_bits & 0x1)]


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, budget: Budget) -> bytes:
    """The first ``size`` bytes of the member, taken from ``budget``."""
    room = budget.room()
    try:
        with archive.open(info) as member:
            data = member.read(min(size, room) + 1)
    except BROKEN as e:
        raise Unreadable("a zip member that cannot be read to check") from e
    if len(data) > room:
        raise Unreadable("too many bytes in zip archives to check")
    budget.take(len(data))
    return data[:size]
