"""mbox: finding the messages in one pass of bounded memory, and removing some of them safely.

mbox(5) (qmail's, the usual reference): a message begins with a From_ line ("From " at the
start of a line), continues with non-From_ lines and ends with a blank line; writers quote
body lines that would look like a From_ line (">From "). A From_ line therefore starts a message
only at the start of the file or after a blank line; an unquoted "From " inside a paragraph stays
in the body. Messages are located with bytes.find over 1 MiB reads: the file is never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
from collections.abc import Callable, Iterator, Sequence
from email.parser import BytesHeaderParser
from email.policy import compat32

from avtool import safedir
from avtool.scan.mailbox.locking import locked
from avtool.scan.mailbox.maildir import copy_range
from avtool.scan.mailbox.message import HEAD_LIMIT, Message, OpenFile, Problem, read_head

CHUNK = 1 << 20
_SEP = b"\n\nFrom "


class Changed(Exception):
    """The mbox is not what was scanned any more (rewritten by a reader meanwhile)."""


def messages(path: str, source: OpenFile, size: int) -> Iterator[Message | Problem]:
    """The messages of the mbox open as ``source``, as byte ranges, up to ``size`` (its size
    when the walk opened it: mail appended during the scan is left for the next one).

    A message's bytes exclude its From_ line and the blank line that ends it. A file that ends
    in the middle of a line was cut short (a delivery interrupted, a full disk): its last
    message is still scanned, and a Problem says so.
    """
    number = 0
    previous: tuple[int, int] | None = None
    st = os.fstat(source.fd)
    ident = (st.st_dev, st.st_ino)
    for start, body in boundaries(source.fd, size):
        if previous is not None:
            number += 1
            yield _message(path, source, ident, number, previous, start, start - 1)
        previous = (start, body)
    if previous is None:
        return
    number += 1
    tail = os.pread(source.fd, 2, size - 2) if size >= 2 else b""
    end = size - 1 if tail == b"\n\n" else size
    last = _message(path, source, ident, number, previous, size, end)
    yield last
    if not tail.endswith(b"\n"):
        yield Problem(path, f"truncated: message {number} ends in the middle of a line")
    elif last.size < HEAD_LIMIT and not _has_body(read_head(source.fd, last.offset, last.size)):
        yield Problem(path, f"truncated: message {number} ends inside its header")


def _has_body(head: bytes) -> bool:
    return b"\n\n" in head or b"\r\n\r\n" in head


def _message(
    path: str,
    source: OpenFile,
    ident: tuple[int, int],
    number: int,
    first: tuple[int, int],
    end: int,
    stop: int,
) -> Message:
    start, body = first
    size = max(0, stop - body)
    dev, ino = ident
    return Message(
        path, "mbox", str(number), path, size, body, start, end, source=source, dev=dev, ino=ino
    )


def boundaries(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(From_ line offset, message body offset) for every message, in order."""
    if os.pread(fd, 5, 0) != b"From ":
        return
    yield 0, _line_end(fd, 0, size)
    pos = 0  # file offset of buf[0]
    buf = b""
    while pos + len(buf) < size:
        data = os.pread(fd, min(CHUNK, size - pos - len(buf)), pos + len(buf))
        if not data:
            break
        # Keep the last len(_SEP)-1 bytes: a separator may straddle two reads.
        keep = buf[-(len(_SEP) - 1) :] if buf else b""
        pos += len(buf) - len(keep)
        buf = keep + data
        found = buf.find(_SEP)
        while found >= 0:
            start = pos + found + 2
            yield start, _line_end(fd, start, size)
            found = buf.find(_SEP, found + 1)


def _line_end(fd: int, start: int, size: int) -> int:
    """Offset just past the newline that ends the line at ``start`` (From_ lines are short)."""
    offset = start
    while offset < size:
        data = os.pread(fd, min(4096, size - offset), offset)
        if not data:
            break
        nl = data.find(b"\n")
        if nl >= 0:
            return offset + nl + 1
        offset += len(data)
    return size


def maildir_flags(head: bytes) -> str:
    """Maildir flags from the Status and X-Status fields, as Python's mailbox converts an
    mboxMessage to a MaildirMessage: R(ead) -> S, D(eleted) -> T, F(lagged) -> F, A(nswered)
    -> R; O(ld) alone means seen by a reader, not read (``cur/`` with no flag: returned as "")."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    status = str(parsed.get("Status", "")) + str(parsed.get("X-Status", ""))
    table = {"R": "S", "D": "T", "F": "F", "A": "R"}
    return "".join(sorted({table[c] for c in status if c in table}))


def is_old(head: bytes) -> bool:
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    return "O" in str(parsed.get("Status", ""))


def digest(fd: int, offset: int, size: int) -> str:
    """SHA-256 of a message's bytes: proof, at rewrite time, that it is what was scanned."""
    h = hashlib.sha256()
    end = offset + size
    while offset < end:
        data = os.pread(fd, min(CHUNK, end - offset), offset)
        if not data:
            break
        h.update(data)
        offset += len(data)
    return h.hexdigest()


Deliver = Callable[[int, Message], str]


def remove(
    path: str,
    victims: Sequence[tuple[Message, str]],
    deliver: Deliver,
    undo: Callable[[str], None],
    *,
    lock_timeout: float,
) -> list[tuple[Message, str]]:
    """Take ``victims`` (message, digest) out of the mbox at ``path``; ``deliver(fd, message)``
    puts each one elsewhere first and returns where. Returns (message, where) pairs.

    Order, so that no message is ever lost: lock (locking.py); check each victim is still
    the same bytes at the same place (else Changed, nothing done); deliver every victim; write
    the kept bytes to a temp file in the same directory, fsync, rename over the mbox, fsync the
    directory. If anything fails before that rename, the temp file and the deliveries are undone
    (``undo(where)``) and the mbox is as it was; after it, the move has happened. A hard kill
    between delivery and rename leaves a copy in both places, never in none.

    The mbox's directory may belong to a user (root moving mail out of ``~bob/mail``): it is
    opened once without following a name that user controls (safedir.open_parent), and the
    mbox, its locks and the temp file are opened, made and renamed only through that
    descriptor, the mbox only if it is the file that was scanned (st_dev, st_ino). If the
    path no longer leads to them when the rewrite is ready (the directory or the file was
    moved or swapped meanwhile), nothing is changed: Changed. safedir.Unsafe if the path
    cannot be opened so.
    """
    dir_fd, name = safedir.open_parent(path)
    try:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
        try:
            _same_file(fd, victims)
            with locked(dir_fd, name, fd, lock_timeout):
                return _rewrite(path, dir_fd, name, fd, victims, deliver, undo)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _rewrite(
    path: str,
    dir_fd: int,
    name: str,
    fd: int,
    victims: Sequence[tuple[Message, str]],
    deliver: Deliver,
    undo: Callable[[str], None],
) -> list[tuple[Message, str]]:
    st = os.fstat(fd)
    ordered = sorted(victims, key=lambda v: v[0].start)
    _check(fd, st.st_size, ordered)
    done: list[tuple[Message, str]] = []
    tmp = f".{name}.avtool-{os.getpid()}-{random.getrandbits(32):08x}.tmp"  # noqa: S311
    made = replaced = False
    try:
        for message, _ in ordered:
            done.append((message, deliver(fd, message)))
        _write_kept(fd, st, dir_fd, tmp, [m for m, _ in ordered])
        made = True
        if not _still_at(path, dir_fd, name, st):
            raise Changed("it or its directory was moved or replaced meanwhile; not changed")
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        replaced = True
        with contextlib.suppress(OSError):  # moved; a crash now can only leave a second copy
            os.fsync(dir_fd)
    except BaseException:
        if not replaced:
            if made:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
            for _, where in done:
                with contextlib.suppress(OSError):
                    undo(where)
        raise
    return done


def _same_file(fd: int, victims: Sequence[tuple[Message, str]]) -> None:
    """The file open as ``fd`` is the one the victims were read from (never moved otherwise)."""
    st = os.fstat(fd)
    for m, _ in victims:
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (m.dev, m.ino):
            raise Changed("not the file that was scanned (replaced since); not changed")


def _still_at(path: str, dir_fd: int, name: str, st: os.stat_result) -> bool:
    """Whether ``path`` still leads, by the same safe walk, to the mbox being rewritten."""
    try:
        now_fd, now_name = safedir.open_parent(path)
    except (OSError, safedir.Unsafe):
        return False
    try:
        a, b = os.fstat(dir_fd), os.fstat(now_fd)
        file = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    finally:
        os.close(now_fd)
    return (
        now_name == name
        and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        and (file.st_dev, file.st_ino) == (st.st_dev, st.st_ino)
    )


def _check(fd: int, size: int, victims: Sequence[tuple[Message, str]]) -> None:
    for message, expected in victims:
        m = message
        ok = (
            m.end <= size
            and os.pread(fd, 5, m.start) == b"From "
            and (m.start == 0 or os.pread(fd, 2, m.start - 2) == b"\n\n")
            and (m.end == size or os.pread(fd, 5, m.end) == b"From ")
            and digest(fd, m.offset, m.size) == expected
        )
        if not ok:
            raise Changed(f"changed since the scan (message {m.key}); not changed, scan again")


def _write_kept(
    fd: int, st: os.stat_result, dir_fd: int, tmp: str, removed: Sequence[Message]
) -> None:
    """Every byte but the removed messages' (From_ line to next From_ line) into ``tmp`` (made
    in ``dir_fd``, never through a link), with the mbox's owner, mode and times: readers
    compare mtime and atime to tell new mail."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        try:
            with contextlib.suppress(OSError):
                os.fchown(out, st.st_uid, st.st_gid)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            pos = 0
            for m in removed:
                copy_range(fd, out, pos, m.start - pos)
                pos = m.end
            size = st.st_size
            while True:  # mail appended by a program that ignores the locks is kept too
                copy_range(fd, out, pos, size - pos)
                pos, size = size, os.fstat(fd).st_size
                if size == pos:
                    break
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
