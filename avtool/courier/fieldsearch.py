"""Where unscannable.py looks in a message's bytes, found fast: the names ``content-type`` and
``content-transfer-encoding`` in any case, and the lines that start with ``--`` (the cuts
between a multipart's parts).

Both have a "-", which text and base64 rarely hold while "\\n" and letters are everywhere:
each "-" is found with memchr(3) (bytes.find of one byte) and looked at in place; where "-" is
common (HTML, CSS) the plain search takes over (a lower-cased copy for the name). A file is
read with pread(2) from where it is asked, its offset left alone; a chunk is read with the
byte before it (a "\\n" before the first) and the bytes after it that a name begun in it
needs, so that nothing across a chunk's edge is missed. And the bodies unscannable.py looks
inside, decoded: base64 and quoted-printable, as leniently as mail readers do; and whether
what it decodes looks like mail to clamd.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Generator, Iterator

NEEDLE = b"content-type"
ENCODING = b"content-transfer-encoding"  # its "-" is where NEEDLE's is, 7 bytes in
_NAMES = re.compile(rb"content-t(?:ype|ransfer-encoding)")  # in a lower-cased copy
OVERLAP = len(ENCODING) - 1  # bytes read past a chunk: a name begun in it ends there
CHUNK = 1 << 16  # below glibc's mmap threshold: buffers come from the heap, no page faults
DASHES_LOOKED_AT = 32  # "-" looked at one by one before a piece is lower-cased whole
DASHES = b"\n--"
_BLANKS = b" \t\r\n"


# Lenient: text (no control characters but blanks and line ends) with a header field line (or
# an mbox From_ line) anywhere in its first MAIL_HEAD bytes, where clamd's own test for mail
# looks for some of them (libclamav's filetypes: "\nFrom: ", "\nMIME-Version: ",
# "\nContent-Type: "... within the first 1-3 KiB). Without the first test, 4 of
# bench/corpus.py's 500 messages had a random attachment decoded whole for a chance "\nX:".
_MAILISH = re.compile(rb"(?m)^(?:From |[!-9;-~]+[ \t]*:)")
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
MAIL_HEAD = 2 << 10


def looks_like_mail(text: bytes) -> bool:
    """Whether ``text`` looks like mail to clamd, leniently: in its first MAIL_HEAD bytes no
    control character but blanks and line ends, and a header field line."""
    text = text[:MAIL_HEAD]
    return not has_control(text) and _MAILISH.search(text) is not None


def has_control(text: bytes) -> bool:
    return _CONTROL.search(text) is not None


class Source:
    """The bytes looked at: a file open on ``fd`` (from ``base``, ``size`` bytes, the first
    ones already read into ``head``), or bytes in memory (``fd`` -1)."""

    def __init__(self, fd: int, base: int, size: int, head: bytes) -> None:
        self.fd, self.base, self.size, self.head = fd, base, size, head

    def read(self, start: int, end: int) -> bytes:
        start, end = max(0, start), min(end, self.size)
        if end <= len(self.head) or self.fd < 0:
            return self.head[start:end]
        out = []
        while start < end:
            data = os.pread(self.fd, end - start, self.base + start)
            if not data:
                break
            out.append(data)
            start += len(data)
        return b"".join(out)


def needles(data: bytes, offset: int, limit: int) -> Iterator[int]:
    """Where ``content-type`` or ``content-transfer-encoding`` starts, any case, in ``data``
    (at ``offset`` in the file), before ``limit``; ``data`` holds OVERLAP bytes past it. Every
    occurrence has its "-" 7 bytes in: those are found with memchr(3) and each is looked at;
    where "-" is common (HTML, CSS) the lower-cased copy is searched instead."""
    at = data.find(b"-", 7)
    for _ in range(DASHES_LOOKED_AT):
        if at < 0 or at - 7 >= limit:
            return
        name = data[at - 7 : at + 5].lower()
        if name == NEEDLE or (name == ENCODING[:12] and data[at - 7 : at + 18].lower() == ENCODING):
            yield offset + at - 7
        at = data.find(b"-", at + 1)
    if at < 0 or at - 7 >= limit:
        return
    lowered = data[at - 7 : limit + OVERLAP].lower()
    for match in _NAMES.finditer(lowered):
        if match.start() < limit - (at - 7):
            yield offset + at - 7 + match.start()


def dash_line(data: bytes, start: int, end: int) -> int:
    """``data.find(b"\\n--", start, end)``, by a search for "-" alone (memchr(3)): in text and
    base64 "-" is rare and "\\n" is not, which makes the plain search ten times slower (12 us
    for 64 KiB of text). Past 64 "-" that start no such line (HTML, CSS), the plain search."""
    stop = max(end - 1, 0)  # where a line's first "-" can be; never negative (from the end)
    at = data.find(b"-", start + 1, stop)
    for _ in range(64):
        if at < 0:
            return -1
        if data[at - 1] == 0x0A and data[at + 1 : at + 2] == b"-":
            return at - 1
        at = data.find(b"-", at + 1, stop)
    return -1 if at < 0 else data.find(DASHES, at - 1, end)


def all_needles(src: Source, start: int, end: int) -> Iterator[int]:
    """Every occurrence from ``start`` to ``end``, chunk by chunk, none skipped."""
    for offset in range(start, end, CHUNK):
        stop = min(offset + CHUNK, end)
        yield from needles(src.read(offset, stop + OVERLAP), offset, stop - offset)


def needles_until_dashes(src: Source, start: int) -> Generator[int, None, int]:
    """The occurrences from ``start`` up to the next line that starts with ``--``; returns
    where that line starts (the end of the file when there is none). That line is found
    first, so that only what comes before it is lower-cased."""
    offset, size = start, 1 << 13  # growing: the next "--" line is often near
    while offset < src.size:
        stop = min(offset + size, src.size)
        size = min(2 * size, CHUNK)
        # From the byte before offset (before the first, a "\n"), to the end of a name begun
        # before stop: the first chunk once lacked those bytes (tests/support/evasion.py).
        data = (b"" if offset else b"\n") + src.read(offset - 1, stop + OVERLAP)
        dash = dash_line(data, 0, stop - offset + len(DASHES))  # the line starts at offset + i
        end = dash if dash >= 0 else stop - offset
        yield from needles(data, offset - 1, end + 1)
        if dash >= 0:
            return offset + dash
        offset = stop
    return src.size


def dashes(src: Source, start: int) -> int:
    """Where the next line that starts with ``--`` starts, from the line at ``start`` on (the
    end of the file when there is none), in a base64 body: a search for "-" alone (memchr),
    the plain search for a chunk where 64 "-" were not one."""
    for offset in range(start, src.size, CHUNK):
        data = (b"" if offset else b"\n") + src.read(offset - 1, offset + CHUNK + 1)
        line = dash_line(data, 0, CHUNK + len(DASHES))
        if line >= 0:
            return offset + line
    return src.size


def find_from(src: Source, start: int, needle: bytes) -> int:
    """Where ``needle`` is first found from ``start``, or -1. The first read is small: what is
    looked for is often near (the end of a line)."""
    offset, size = start, 1 << 12
    while offset < src.size:
        at = src.read(offset, offset + size + len(needle) - 1).find(needle)
        if at >= 0:
            return offset + at
        offset, size = offset + size, CHUNK
    return -1


def decode_start(peek: bytes, encoding: bytes) -> bytes:
    """The first bytes of an encoded body, decoded (to the part's end, if that is near)."""
    if encoding != b"base64":
        return binascii.a2b_qp(peek)
    end = peek.find(b"\n--")  # base64 has no "-"
    text = (peek if end < 0 else peek[:end]).translate(None, _BLANKS)
    data = _b64_stream(text[: len(text) // 4 * 4])
    return data if data is not None else decode(peek, encoding)


def decode(body: bytes, encoding: bytes) -> bytes:
    """An encoded body decoded: base64 as one stream where it is one, as clamd and mail readers
    read it (a third less time than line by line), else line by line, a bad line empty."""
    if encoding != b"base64":
        return binascii.a2b_qp(body)
    data = _b64_stream(body.translate(None, _BLANKS))
    return data if data is not None else b"".join(_b64_line(line) for line in body.splitlines())


def _b64_stream(text: bytes) -> bytes | None:
    """``text`` (no blanks) decoded in one call, or None where junk, a padding inside or a
    length not a multiple of 4 stops it short."""
    if len(text) % 4:
        return None
    try:
        data = binascii.a2b_base64(text)
    except binascii.Error:
        return None
    return data if len(data) >= len(text) // 4 * 3 - 2 else None


def _b64_line(line: bytes) -> bytes:
    """A base64 line decoded as leniently as mail readers do: junk skipped, a bad line empty."""
    try:
        return binascii.a2b_base64(line)
    except binascii.Error:
        return b""
