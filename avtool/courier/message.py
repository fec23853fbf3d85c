"""Header edits on Courier's data file: add our fields, rename incoming ones of the same names.

Incoming ``X-Virus-Status`` and the like are renamed to ``Old-X-Virus-Status`` (avfilter 3.x
renames a field it adds to ``Old-<name>`` when the message already has one), so a downstream
maildrop recipe can trust the field of that name. Our fields go at the very top, above
Courier's own ``Received:``: prepending is how every hop adds its trace fields, and RFC 5322
3.6 does not order other fields.

The file is streamed, never read whole: the header line by line (in pieces of at most 64 KiB),
the body in 1 MiB copies, into a temporary file in the same directory that gets the owner,
group and mode of the original, is fsynced and renamed over it; then the directory is fsynced.
The daemon does all of it on the descriptors that courier/spool.py opened before the scan (the
data file, read with ``pread``, and its directory: ``*_in`` functions), so what is rewritten
is what was scanned even if a directory on the path was swapped meanwhile.
Replacing the data file this way is what zdkimfilter's filterlib does (docs/notes/peers.md section
1); Courier reads the file by name after the filter answers (docs/notes/courier.md section 3).
Handles LF and CRLF files, folded fields, 8-bit bytes, and a message that is all header.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from avtool.errors import AvtoolError
from avtool.safedir import CREATE_NOFOLLOW, READ_NOFOLLOW

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

RENAME_PREFIX = "Old-"
READ_LINE = 1 << 16
FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters
MAX_WORD = 900  # and MUST be at most 998
_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 2.2: printable ASCII except ':'
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class MessageError(AvtoolError):
    """The data file is not one we may rewrite (not a regular file); the pipeline answers 432."""


def field_line(name: str, value: str, eol: bytes = b"\n") -> bytes:
    """``Name: value`` + ``eol``, folded at spaces near 78 columns, UTF-8 (RFC 6532). Control
    characters in ``value`` (CR, LF, NUL, tabs ...) become spaces, so a value can never start
    another field or end the header; an invalid ``name`` is a programming error (ValueError).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a header field name: {name!r}")
    words = [w[:MAX_WORD] for w in _CONTROL.sub(" ", value).split()]
    lines: list[str] = []
    current = name + ":"
    for word in words:
        if len(current) + 1 + len(word) > FOLD_AT and current != name + ":":
            lines.append(current)
            current = ""
        current += " " + word
    lines.append(current)
    return eol.join(line.encode("utf-8") for line in lines) + eol


def _header(src: BinaryIO) -> Iterator[tuple[bytes, bytes | None]]:
    """Each physical line of the header with the lower-case name of the field it starts (None
    for a continuation, a piece of a long line, a line without a colon, and the blank line that
    ends the header, which is the last one yielded). ``src`` is left at the start of the body.
    """
    at_start = True
    while line := src.readline(READ_LINE):
        if at_start and line in (b"\n", b"\r\n"):
            yield line, None
            return
        name = None
        if at_start and line[:1] not in (b" ", b"\t"):
            colon = line.find(b":")
            if colon > 0:
                name = line[:colon].rstrip(b" \t").lower()
        yield line, name
        at_start = line.endswith(b"\n")


class _Names:
    """Lower-case field names to match: exact ones, and prefixes (given as ``X-Virus-*``)."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, exact: frozenset[bytes], prefixes: tuple[bytes, ...]) -> None:
        self.exact, self.prefixes = exact, prefixes

    def __contains__(self, name: bytes | None) -> bool:
        return name is not None and (name in self.exact or name.startswith(self.prefixes))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def needles(self) -> tuple[bytes, ...]:
        """What a header holding one of the names must contain (for _ruled_out)."""
        return (*self.exact, *self.prefixes)


def _names(names: Iterable[str]) -> _Names:
    return _names_of(tuple(names))


@functools.lru_cache(maxsize=64)  # the same few names for every message
def _names_of(names: tuple[str, ...]) -> _Names:
    exact, prefixes = set(), []
    for name in names:
        bare = name.removesuffix("*")
        if not _NAME.fullmatch(bare):
            raise ValueError(f"not a header field name: {name!r}")
        if bare != name:
            prefixes.append(bare.lower().encode("ascii"))
        else:
            exact.add(bare.lower().encode("ascii"))
    return _Names(frozenset(exact), tuple(prefixes))


def _open(path: str, dir_fd: int | None = None) -> int:
    """A descriptor of the regular file ``path`` (in ``dir_fd``), never through a link."""
    fd = os.open(path, READ_NOFOLLOW, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MessageError(f"not a regular file: {path}")
    os.set_blocking(fd, True)
    return fd


class _At(io.RawIOBase):
    """The file open on ``fd`` read from its start with ``pread``, at a position of our own:
    the file's offset is shared with every clamd it was passed to (FILDES), and one whose scan
    was abandoned at its timeout may still be reading it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        n = os.preadv(self._fd, [buffer], self._pos)
        self._pos += n
        return n


def _reader(fd: int) -> io.BufferedReader:
    """A buffered reader of ``fd`` from its start (_At); closing it leaves ``fd`` open."""
    return io.BufferedReader(_At(fd), buffer_size=READ_LINE)


def quick_header(head: bytes, size: int) -> bytes | None:
    """The header in lower case (maybe with some body after it) when it lies whole within
    ``head``, the first bytes of a message of ``size`` bytes; else None. For a quick "no": a
    header that nowhere contains a field's name, or a word, cannot have the field."""
    end = head.find(b"\n\n")
    if end < 0:
        end = head.find(b"\n\r\n")
    if end < 0 and len(head) >= size:
        end = len(head)  # all header
    return head[:end].lower() if end >= 0 else None


def _ruled_out(header: bytes | None, needles: Iterable[bytes]) -> bool:
    """True when a whole ``header`` (quick_header) contains none of ``needles``."""
    return header is not None and not any(needle in header for needle in needles)


def has_fields(path: str, names: Iterable[str], *, quick: bytes | None = None) -> bool:
    """has_fields_in for the message at ``path``, opened here without following a link."""
    fd = _open(path)
    try:
        return has_fields_in(fd, names, quick=quick)
    finally:
        os.close(fd)


def has_fields_in(fd: int, names: Iterable[str], *, quick: bytes | None = None) -> bool:
    """Whether the header of the message open on ``fd`` has a field with one of ``names``
    (case-insensitive; ``X-Virus-*`` for every name that begins so). Reads the header only,
    and nothing when ``quick`` (quick_header) or the first read rules the names out."""
    wanted = _names(names)
    if not wanted:
        return False
    needles = wanted.needles()
    if _ruled_out(quick, needles):
        return False
    with _reader(fd) as src:
        if quick is None:
            head = src.peek(READ_LINE)[:READ_LINE]
            if _ruled_out(quick_header(head, os.fstat(fd).st_size), needles):
                return False
        return any(name in wanted for _, name in _header(src))


def _eol(src: BinaryIO) -> bytes:
    """The line ending of the first line: new fields match it (Courier itself writes LF)."""
    peek = getattr(src, "peek", None)
    head: bytes = peek(READ_LINE)[:READ_LINE] if peek else b""
    nl = head.find(b"\n")
    return b"\r\n" if nl > 0 and head[nl - 1 : nl] == b"\r" else b"\n"


def rewrite_headers(
    path: str,
    add: Sequence[tuple[str, str]],
    rename_prefix_for: Iterable[str],
    *,
    prefix: str = RENAME_PREFIX,
) -> None:
    """rewrite_headers_in for the message at ``path``: its directory and the file (never
    through a link as the last step) opened here."""
    directory, name = os.path.split(path)
    dir_fd = os.open(directory or ".", _DIR)
    try:
        fd = _open(name, dir_fd)
        try:
            rewrite_headers_in(fd, dir_fd, name, add, rename_prefix_for, prefix=prefix)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def rewrite_headers_in(
    fd: int,
    dir_fd: int,
    name: str,
    add: Sequence[tuple[str, str]],
    rename_prefix_for: Iterable[str],
    *,
    prefix: str = RENAME_PREFIX,
) -> None:
    """Put the ``add`` fields (name, value) at the top of the message open on ``fd``, called
    ``name`` in the directory open on ``dir_fd``, and rename every incoming field named in
    ``rename_prefix_for`` (``X-Virus-*``: every name that begins so) to ``prefix`` + its name,
    in one atomic replacement of the file (module docstring). Raises OSError; the original is
    then untouched and no temporary file is left."""
    wanted = _names(rename_prefix_for)
    if not _NAME.fullmatch(prefix) or not prefix.endswith("-"):
        raise ValueError(f"not a field name prefix: {prefix!r}")
    fields = [(field, value) for field, value in add]
    for field, _ in fields:
        field_line(field, "")  # validates the name before any I/O
    if not fields and not wanted:
        return
    st = os.fstat(fd)
    out_fd, tmp = _create_temp(dir_fd)
    try:
        with _reader(fd) as src, open(out_fd, "wb", READ_LINE) as out:
            eol = _eol(src)
            for field, value in fields:
                out.write(field_line(field, value, eol))
            mark = prefix.encode("ascii")
            for line, found in _header(src):
                if found in wanted:
                    out.write(mark)
                out.write(line)
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            own = os.fstat(out.fileno())
            if (own.st_uid, own.st_gid) != (st.st_uid, st.st_gid):
                os.fchown(out.fileno(), st.st_uid, st.st_gid)
            os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
            os.fsync(out.fileno())
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)  # rename(2) is atomic, but only fsync of the directory persists it


def _create_temp(dir_fd: int) -> tuple[int, str]:
    """A new file, 0600, in the directory open on ``dir_fd`` (as mkstemp, by descriptor):
    (its descriptor, its name)."""
    while True:
        name = f".avtool-{secrets.token_hex(8)}.tmp"
        try:
            return os.open(name, CREATE_NOFOLLOW, 0o600, dir_fd=dir_fd), name
        except FileExistsError:
            continue
