"""MH folders: one message per file named by a positive number, sequences in ``.mh_sequences``
(mh-sequence(5) of nmh: ``name: 1-3 7``), subfolders as subdirectories. Other files (``,12``
backups of removed messages, ``.xmhcache``) are not messages."""

from __future__ import annotations

import bisect
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence

from avtool.scan.mailbox.locking import locked
from avtool.scan.mailbox.message import Message, Problem

SEQUENCES = ".mh_sequences"
CURRENT = "cur"  # the folder's current message: a pointer, not a set the message belongs to
SEQUENCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def is_mh(path: str) -> bool:
    """A folder with ``.mh_sequences``, or whose visible files are all numbered (nmh writes the
    sequences file only once a sequence exists, so a fresh folder has none)."""
    if os.path.isfile(os.path.join(path, SEQUENCES)):
        return True
    numbered = False
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith((".", ",")) or not _is_file(entry):
                    continue
                if not _is_number(entry.name):
                    return False
                numbered = True
    except OSError:
        return False
    return numbered


def messages(path: str) -> Iterator[Message | Problem]:
    try:
        entries = os.scandir(path)
    except OSError as e:
        yield Problem(path, f"cannot list: {e.strerror or e}")
        return
    with entries:
        for entry in entries:
            if not _is_number(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield Message(
                    path, "mh", entry.name, entry.path, st.st_size, dev=st.st_dev,
                    ino=st.st_ino, mtime=st.st_mtime_ns,
                )  # fmt: skip


def folders(path: str) -> Iterator[str]:
    try:
        with os.scandir(path) as entries:
            names = [
                e.path
                for e in entries
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return
    yield from sorted(names)


MAX_SEQUENCES_BYTES = 1 << 20  # nmh writes a few lines; more is read no further
MAX_DIGITS = 18  # a message number past this is no message's (int() also refuses 4300+)


class Ranges:
    """A sequence's message numbers as sorted, disjoint ranges: ``unseen: 1-1000000000``
    costs two numbers, not a set of a billion (which took root's scan out of memory)."""

    __slots__ = ("highs", "lows")

    def __init__(self, pairs: Iterable[tuple[int, int]]) -> None:
        self.lows: list[int] = []
        self.highs: list[int] = []
        for low, high in sorted(pairs):
            if self.highs and low <= self.highs[-1] + 1:
                self.highs[-1] = max(self.highs[-1], high)
            else:
                self.lows.append(low)
                self.highs.append(high)

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        at = bisect.bisect_right(self.lows, number) - 1
        return at >= 0 and number <= self.highs[at]

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple(zip(self.lows, self.highs, strict=True))


def sequences(path: str, dir_fd: int | None = None) -> dict[str, Ranges]:
    """The folder's sequences: name -> message numbers (missing or unreadable file: none).
    The file is opened without following a link, only when it is a regular file (not a fifo
    that would block root's scan), and only its first MAX_SEQUENCES_BYTES are read.
    ``dir_fd``: the folder, open (root moving a user's mail reads it only through that:
    safedir.py)."""
    try:
        if dir_fd is None:
            fd = os.open(os.path.join(path, SEQUENCES), _READ)
        else:
            fd = os.open(SEQUENCES, _READ, dir_fd=dir_fd)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.read(fd, MAX_SEQUENCES_BYTES)
    except OSError:
        return {}
    finally:
        os.close(fd)
    pairs: dict[str, list[tuple[int, int]]] = {}
    name = ""
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line[:1].isspace() and name:  # a continuation line (mh-sequence(5))
            rest = line
        else:
            name, sep, rest = line.partition(":")
            if not sep:
                name = ""
                continue
            name = name.strip()
        found = pairs.setdefault(name, [])
        for part in rest.split():
            low, _, high = part.partition("-")
            high = high or low
            if _is_count(low) and _is_count(high) and int(low) <= int(high):
                found.append((int(low), int(high)))
    return {name: Ranges(found) for name, found in pairs.items()}


def maildir_flags(key: str, seqs: dict[str, Ranges]) -> str:
    """Maildir flags for MH message ``key``, as Python's mailbox converts an MHMessage to a
    MaildirMessage: seen unless in ``unseen``; ``flagged`` -> F, ``replied`` -> R."""
    number = int(key)
    flags = "" if number in seqs.get("unseen", _NONE) else "S"
    if number in seqs.get("flagged", _NONE):
        flags += "F"
    if number in seqs.get("replied", _NONE):
        flags += "R"
    return flags


def member_of(key: str, seqs: dict[str, Ranges]) -> list[str]:
    """The sequences that hold MH message ``key`` (the current-message pointer aside), in the
    file's order: what a put-back restores (add_to_sequences)."""
    number = int(key)
    return [
        n for n, r in seqs.items() if n != CURRENT and SEQUENCE_NAME.fullmatch(n) and number in r
    ]


def add_to_sequences(folder_fd: int, number: int, names: Sequence[str], timeout: float) -> None:
    """Add message ``number`` to the sequences ``names`` in the folder's ``.mh_sequences`` (made,
    0600, if there is none), under the fcntl, flock and dot locks that nmh (fcntl) and Python's
    mailbox (fcntl and dot) take on it (locking.py). Only those lines change: the number is
    appended to a sequence's last line, or a line ``name: number`` is added. The file is
    opened without following a link and only written when it is a regular file; OSError or
    locking.Busy otherwise."""
    if not names:
        return
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(SEQUENCES, flags, 0o600, dir_fd=folder_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{SEQUENCES}: not a regular file; not changed")
        with locked(folder_fd, SEQUENCES, fd, timeout):
            raw = os.pread(fd, MAX_SEQUENCES_BYTES + 1, 0)
            if len(raw) > MAX_SEQUENCES_BYTES:  # read under the lock: what is written back
                raise OSError(f"{SEQUENCES}: over {MAX_SEQUENCES_BYTES} bytes; not changed")
            new = with_number(raw, number, names)
            view = memoryview(new)
            written = 0
            while written < len(new):
                written += os.pwrite(fd, view[written:], written)
            os.ftruncate(fd, len(new))
            os.fsync(fd)
    finally:
        os.close(fd)


def with_number(raw: bytes, number: int, names: Sequence[str]) -> bytes:
    """``.mh_sequences`` text ``raw`` with ``number`` added to each sequence of ``names``, the
    rest byte for byte as it was (continuation lines are read as sequences() reads them)."""
    lines = raw.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    last: dict[bytes, int] = {}  # sequence name -> its last physical line
    name = b""
    for at, line in enumerate(lines):
        if not (line[:1].isspace() and name):
            head, sep, _ = line.partition(b":")
            name = head.strip() if sep else b""
        if name:
            last[name] = at
    for text in dict.fromkeys(names):
        key = text.encode("ascii")
        found = last.get(key)
        if found is None:
            last[key] = len(lines)
            lines.append(b"%s: %d\n" % (key, number))
        else:
            lines[found] = lines[found].rstrip(b"\r\n") + b" %d\n" % number
    return b"".join(lines)


_NONE = Ranges(())
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


def _is_number(name: str) -> bool:
    return name.isascii() and name.isdigit() and name[0] != "0"


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False
