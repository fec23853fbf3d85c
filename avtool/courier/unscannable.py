"""Messages clamd answers "OK" for without looking: a message whose own type is ``message/*``.

libclamav's mail parser scans the body of a message (the top level, or one embedded in a
``message/rfc822`` part, decoded when it is base64 or quoted-printable) only when the
message's own Content-Type is ``message/rfc822``, ``message/delivery-status`` or
``message/disposition-notification``; for any other ``message/*`` (``partial``, RFC 2046 5.2.2,
but also ``external-body``, ``global``, a made-up ``message/foo``) it logs "Partial message
received from MUA/MTA - message cannot be scanned" or "Unsupported message format" and
answers OK. A ``message/*`` *part* of a multipart is scanned. Found by trial on ClamAV 1.4.6
(tests/support/evasion.py FRAGMENTS, tests/integration/test_evasion.py); clamd's reading of the
field, also by trial: the last Content-Type counts, comments are dropped, quotes and
whitespace around the type are dropped, but a subtype with a space or quotes in it
(``message/ rfc822``, ``message/"rfc822"``) is an unknown one. So such a message is
"unchecked" and policy.unchecked decides.

What is looked at, and why it is safe to be lenient: every Content-Type field of the message,
found by a search for the name at the start of a line (no MIME walk that could disagree with
clamd's about boundaries). A field counts unless its header block follows a ``--`` line (the
header of a multipart's part); one of type ``message`` (after dropping comments, quotes and
whitespace) whose subtype is not exactly one of the three makes the message unchecked. A part
in base64 or quoted-printable (every Content-Transfer-Encoding field is looked at too) is
decoded and looked at the same way when its header says ``message/rfc822`` or ``multipart/*``
(before or after the encoding), and when its first bytes decoded look like mail: clamd decodes
such a part whatever its declared type, takes it for mail and answers OK for a fragment in it
(by trial: an ``.eml`` attachment typed application/octet-stream, text/plain or not at all).
One that decodes to a zip archive is opened, and its members that look like mail are looked at
the same way (archives.py; other kinds of archive are not). Being wrong errs towards
"unchecked": a line in a text body that looks like such a field after a blank line, or
``Content-Type: "message/rfc822"`` that clamd would scan.

Cost, as this runs for every clean message in the daemon's loop. The names and the lines that
start with ``--`` are found by fieldsearch.py (memchr(3) for their "-"); a field whose type
starts with a letter other than m is dismissed at once, in place (_dismissed). A message up to
64 KiB (most mail, already read: pipeline.judge) is searched whole; a bigger one is cut at the
lines that start with ``--``, and a part whose header declares base64 for a type clamd only
decodes (most of the bytes) is read past (base64 has no "-"), after a declared boundary and a
header that ended before it only. On bench/corpus.py (mean 264 KB), warm: 7 us for a message
up to 64 KiB, 0.1 ms for one of 640 KB and 0.2-0.35 ms for 2.6 MB (mostly the reading), 45 us
on average; on bench/rescan.py's mail (mean 23 KB) 9 us; bench/serve.py: 0.15-0.25 ms more
daemon CPU a message (cold caches after each wait for clamd); searching the first 64 KiB only
would be blind to a fragment after a 64 KiB part.
Bounded for hostile input: at most MAX_FIELDS fields, MAX_CONTAINER_FIELDS of type message
or multipart and MAX_ENCODED_PARTS base64 or quoted-printable parts are looked at, a piece's
end is searched the plain way after 64 "-" that are not one, MAX_PIECES pieces are cut (then
the rest is searched whole), an encoded part is decoded at most MAX_DEPTH deep and
DECODE_BUDGET bytes in all; past a bound, the message is unchecked ("too many ... to check").
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from avtool.courier import archives
from avtool.courier.fieldsearch import (
    DASHES,
    ENCODING,
    NEEDLE,
    Source,
    all_needles,
    dashes,
    decode,
    decode_start,
    find_from,
    has_control,
    looks_like_mail,
    needles,
    needles_until_dashes,
)

FLAT = 1 << 16  # a message up to this size is searched whole
MAX_PIECES = 5_000  # pieces cut at "--" lines; past them the rest is searched whole
BACK = 8 << 10  # bytes before a field searched for the start of its header block
FORWARD = 8 << 10  # bytes after a field's name read for its value and its block
MAX_VALUE = 2 << 10  # bytes of an unfolded value parsed
MAX_BLOCK = 1 << 20  # bytes of a header block read to find its end
PEEK = 4 << 10  # bytes of an encoded body decoded to see whether it looks like mail
MAX_FIELDS = 10_000
MAX_CONTAINER_FIELDS = 500
MAX_ENCODED_PARTS = 500  # base64 and quoted-printable parts looked at
MAX_DEPTH = 5
DECODE_BUDGET = 32 << 20
PARTIAL = "message/partial: a fragment, clamd cannot scan it"
NOT_SCANNED = "clamd does not scan this type"
SCANNED = frozenset({b"rfc822", b"delivery-status", b"disposition-notification"})

_COMMENT = re.compile(rb"\([^()]*\)")  # RFC 5322 3.2.2, innermost first (nested: repeated)
_SPACE = re.compile(rb"[ \t\r\n]+")
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 2.2, with obs-FWS before the colon
_COLON = re.compile(rb"[ \t]*:[ \t\r\n]*")  # after the name: to the value's first character
_CTE = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
_CT = re.compile(rb"(?im)^[ \t]*content-type[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
_TOKEN = re.compile(rb"[a-z0-9][a-z0-9!#$&^_.+-]*")  # RFC 2045 5.1, the usual characters
_CONTAINERS = (b"message", b"multipart")
_BOUNDARY = re.compile(rb'(?i)\bboundary[ \t]*=[ \t]*(?:"([^"]*)"|([^ \t;"]+))')  # RFC 2046 5.1.1
_PRINTABLE = re.compile(rb"[^!-~]")
_NAME_END = re.compile(rb"[ \t]*:")  # a field's name to its colon


class TooComplex(Exception):
    """A bound was reached: the message cannot be checked cheaply enough."""


class _Budget:
    """What has been looked at so far, against the bounds, and the multipart boundaries seen
    (as their delimiter lines, ``--`` and the boundary)."""

    def __init__(self) -> None:
        self.fields = self.container_fields = self.encoded_parts = 0
        self.decoded = 0
        self.boundaries: set[bytes] = set()

    def room(self) -> int:  # archives.Budget
        return max(0, DECODE_BUDGET - self.decoded)

    def take(self, size: int) -> None:
        self.decoded += size


def find(fd: int, size: int, head: bytes, base: int = 0) -> str | None:
    """Why clamd would not look at the message open on ``fd`` (its ``size`` bytes from
    ``base``; ``head`` the first ones, already read), for an Unchecked verdict ("message/partial:
    ...", "message/foo: ...", "too many ... to check"); None when it would. Reads with pread:
    the file offset is left alone."""
    try:
        return _find(Source(fd, base, size, head), 0, _Budget())
    except TooComplex as e:
        return str(e)


def find_in(data: bytes) -> str | None:
    """find() on a message in memory."""
    return find(-1, len(data), data)


def _find(src: Source, depth: int, budget: _Budget) -> str | None:
    for pos in _hits(src, budget):
        budget.fields += 1
        if budget.fields > MAX_FIELDS:
            raise TooComplex("too many Content-Type fields to check")
        encoding = src.read(pos + 8, pos + 12).lower() == ENCODING[8:12]
        found = (_encoded if encoding else _check)(src, pos, depth, budget)
        if found is not None:
            return found
    return None


def _hits(src: Source, budget: _Budget) -> Iterator[int]:
    """Where ``content-type`` occurs, any case, in order, but not in a base64 body (most of the
    bytes of a big message, where no field can be: module docstring). The file is cut at each
    line that starts with ``--``. A piece is a part whose body clamd only decodes, and is
    searched in its header only, when the line before it is a boundary some multipart field
    declared (_check notes them in ``budget``), the piece before it ended its header with a
    blank line (a "--" line inside a header is no boundary to clamd, by trial), and its own
    header declares base64 for a type clamd does not parse further. Its end is then found
    with a search for "-" alone (memchr(3): base64 has none). A small message is searched
    whole: that costs less than cutting it up."""
    if src.size <= FLAT:
        yield from needles(src.read(0, src.size), 0, src.size)
        return
    start, opener, whole = 0, b"", True
    for _ in range(MAX_PIECES):
        if start >= src.size:
            return
        head = src.read(start, start + FORWARD)
        block = _first_block(head)
        # a "--" line in the first block: a header cut short (by trial: no boundary to clamd)
        cut = block is None or (b"\n" + head[:block]).find(DASHES) >= 0
        skip = whole and not cut and opener in budget.boundaries
        whole = not cut
        body = start
        if block is not None and not cut:
            yield from needles(head[:block], start, block)
            body = start + block
            skip = skip and _base64_leaf(head[:block])
        if skip:
            end = dashes(src, body)
        else:
            end = yield from needles_until_dashes(src, body)
        line = src.read(end, end + 1024)
        after = line.find(b"\n")
        after = end + after if after >= 0 else find_from(src, end, b"\n")
        start = src.size if after < 0 else after + 1
        opener = line[: max(0, after - end)].rstrip(b" \t\r\n")
    yield from all_needles(src, start, src.size)  # too many pieces: the rest, unskipped


def _first_block(head: bytes) -> int | None:
    """Where the first block of lines in ``head`` ends (after its blank line), or None."""
    if head[:1] == b"\n" or head[:2] == b"\r\n":
        return head.find(b"\n") + 1
    ends = [at + len(sep) for sep in (b"\n\n", b"\n\r\n") if (at := head.find(sep)) >= 0]
    return min(ends) if ends else None


def _base64_leaf(block: bytes) -> bool:
    """Whether a part with this header has a body clamd only decodes: every
    Content-Transfer-Encoding base64, and no type that clamd parses (multipart, message)."""
    encodings = [_normal(m.group(1)) for m in _CTE.finditer(block)]
    if not encodings or any(e != b"base64" for e in encodings):
        return False
    for match in _CT.finditer(block):
        kind, _ = _type(_SPACE.sub(b" ", match.group(1)))
        if not _TOKEN.fullmatch(kind) or kind in _CONTAINERS:
            return False
    return True


def _check(src: Source, pos: int, depth: int, budget: _Budget) -> str | None:
    """The verdict of the occurrence at ``pos``, if it starts a Content-Type field."""
    lo, hi = max(0, pos - BACK), min(pos + FORWARD, src.size)
    if hi <= len(src.head) and _dismissed(src.head, pos, lo, hi):
        return None
    window = src.read(lo, pos + FORWARD)
    at = pos - lo
    line = window.rfind(b"\n", 0, at) + 1
    if window[line:at].strip(b" \t"):
        return None  # not the start of a line (leading blanks allowed: be lenient)
    rest = at + len(NEEDLE)
    while window[rest : rest + 1] in (b" ", b"\t"):
        rest += 1
    if window[rest : rest + 1] != b":":
        return None
    first = rest + 1
    while window[first : first + 1] in (b" ", b"\t", b"\r", b"\n"):
        first += 1
    letter = window[first : first + 1]
    if letter.isalpha() and letter not in b"mM":
        return None  # text/..., application/...: the common case, decided without parsing
    value, block_end = _value(window, rest + 1)
    kind, subtype = _type(value)
    if kind not in _CONTAINERS:
        return None
    budget.container_fields += 1
    if budget.container_fields > MAX_CONTAINER_FIELDS:
        raise TooComplex("too many message/* and multipart/* parts to check")
    if kind == b"message" and subtype not in SCANNED and _part_boundary(window, line, lo) is None:
        return PARTIAL if subtype == b"partial" else f"message/{_shown(subtype)}: {NOT_SCANNED}"
    if kind == b"multipart" and (declared := _BOUNDARY.search(value)):
        budget.boundaries.add(b"--" + (declared.group(1) or declared.group(2)).rstrip(b" \t"))
    return None  # an encoded multipart or message/rfc822 is decoded by _encoded


def _encoded(src: Source, pos: int, depth: int, budget: _Budget) -> str | None:
    """The verdict of the occurrence at ``pos``, if it starts a Content-Transfer-Encoding
    field of base64 or quoted-printable. clamd decodes such a part whatever its type, parses
    it when it is a multipart or message/rfc822, and also when what it decodes looks like mail
    to it (by trial: an ``.eml`` typed application/octet-stream, text/plain or not at all, and
    a message/rfc822 part whose encoding comes before its type). So the part is decoded and
    looked inside when its header declares either type (before or after this field), or when
    its first bytes decoded hold a header field line (fieldsearch.looks_like_mail)."""
    lo, hi = max(0, pos - BACK), min(pos + FORWARD, src.size)
    # in place first: most parts are 7bit, 8bit or binary
    if hi <= len(src.head) and _dismissed(src.head, pos, lo, hi, ENCODING, b"bBqQ"):
        return None
    window = src.read(lo, pos + FORWARD)
    at = pos - lo
    line = window.rfind(b"\n", 0, at) + 1
    name_end = _NAME_END.match(window, at + len(ENCODING))
    if window[line:at].strip(b" \t") or name_end is None:
        return None  # not a field at the start of a line
    value, field_end = _value(window, name_end.end())
    encoding = _normal(value)
    if encoding not in (b"base64", b"quoted-printable"):
        return None
    budget.encoded_parts += 1
    if budget.encoded_parts > MAX_ENCODED_PARTS:
        raise TooComplex("too many encoded parts to check")
    window, block, body = _whole_block(src, window, lo, line, field_end)
    peek = src.read(lo + body, lo + body + PEEK)
    first = decode_start(peek[:512], encoding)
    if first.startswith(archives.ZIP):
        return _zipped(src, lo + body, _part_boundary(window, line, lo), encoding, depth, budget)
    if not _mailish(peek, first, encoding):
        header = window[_block_start(window, line) : line] + block
        if not any(_decoded(m.group(1)) for m in _CT.finditer(header)):
            return None
    return _embedded(src, lo + body, _part_boundary(window, line, lo), encoding, depth, budget)


def _mailish(peek: bytes, first: bytes, encoding: bytes) -> bool:
    """Whether an encoded body (``peek``; ``first``, its start decoded) looks like mail: the
    first 256 bytes first, which rule out most binary attachments at a sixth of the cost."""
    return not has_control(first[:256]) and looks_like_mail(decode_start(peek, encoding))


def _zipped(
    src: Source, start: int, boundary: bytes | None, encoding: bytes, depth: int, budget: _Budget
) -> str | None:
    """An encoded zip archive: each member that looks like mail, as a message of its own."""
    if depth >= MAX_DEPTH:
        raise TooComplex("message/rfc822 nested too deep to check")
    try:
        zipped = _body(src, start, boundary, encoding, budget)
        for member in archives.mail_members(zipped, looks_like_mail, budget):
            found = _find(Source(-1, 0, len(member), member), depth + 1, budget)
            if found is not None:
                return found
    except archives.Unreadable as e:
        return str(e)
    return None


def _decoded(value: bytes) -> bool:
    """Whether clamd parses a part of this Content-Type after decoding it."""
    kind, subtype = _type(_SPACE.sub(b" ", value))
    return kind == b"multipart" or (kind == b"message" and subtype == b"rfc822")


def _whole_block(
    src: Source, window: bytes, lo: int, line: int, field_end: int
) -> tuple[bytes, bytes, int]:
    """The window (read on for a long header, up to MAX_BLOCK), the header block from the
    field at ``line`` to its blank line, and where the body starts in the window."""
    block, body = _block(window, line, field_end)
    for more in (1 << 16, MAX_BLOCK):  # a long header block: read on, so far
        if body < len(window) or lo + len(window) >= src.size:
            break
        window = src.read(lo, lo + more)
        block, body = _block(window, line, field_end)
    if body >= len(window) and lo + len(window) < src.size:
        raise TooComplex("a header too long to check")
    return window, block, body


def _block_start(window: bytes, line: int) -> int:
    """Where the header block that holds the line at ``line`` starts in ``window``: back over
    field lines and their continuations (to the window's start, if that is as far as it goes)."""
    while line > 0:
        prev = window.rfind(b"\n", 0, line - 1) + 1
        text = window[prev : line - 1].rstrip(b"\r")
        if not (_FIELD.match(text) or (text[:1] in (b" ", b"\t") and text.strip())):
            return line
        line = prev
    return 0


def _dismissed(
    data: bytes, pos: int, lo: int, hi: int, name: bytes = NEEDLE, kept: bytes = b"mM"
) -> bool:
    """The first tests of _check (or, for ``name`` ENCODING, of _encoded) in place on the
    window ``data[lo:hi]``: True if they end it (not a field at a line's start, or a value
    that starts with a letter not in ``kept``)."""
    colon = _COLON.match(data, pos + len(name), hi)
    if colon is None or data[max(data.rfind(b"\n", lo, pos) + 1, lo) : pos].strip(b" \t"):
        return True
    letter = data[colon.end() : min(colon.end() + 1, hi)]  # b"": the window ends in blanks
    return letter.isalpha() and letter not in kept


def _value(window: bytes, start: int) -> tuple[bytes, int]:
    """The field's value from ``start``, unfolded and at most MAX_VALUE bytes, and where the
    field ends in ``window``."""
    end = start
    while True:
        nl = window.find(b"\n", end)
        if nl < 0:
            end = len(window)
            break
        end = nl + 1
        if window[end : end + 1] not in (b" ", b"\t"):
            break
    return _SPACE.sub(b" ", window[start : min(end, start + MAX_VALUE)]), end


def _type(value: bytes) -> tuple[bytes, bytes]:
    """(type, subtype), lower case, as clamd reads them (module docstring): comments out, the
    type without quotes or whitespace, the subtype with only trailing whitespace dropped."""
    while b"(" in value:
        stripped = _COMMENT.sub(b"", value)
        if stripped == value:
            break
        value = stripped
    value = value.split(b";", 1)[0].lower()
    if b"/" not in value:
        return b"", b""  # no type (clamd scans "message" alone as text: by trial)
    kind, subtype = value.split(b"/", 1)
    if kind.strip().startswith(b'"') and subtype.rstrip().endswith(b'"'):
        subtype = subtype.rstrip()[:-1]  # "message/rfc822" quoted whole: clamd drops them
    return _SPACE.sub(b"", kind.replace(b'"', b"")), subtype.rstrip()


def _part_boundary(window: bytes, line: int, lo: int) -> bytes | None:
    """The ``--`` line before the header block that holds the line at ``line`` (the header of
    a multipart's part), or None for the header of a message (the top, an embedded message,
    or a block we cannot see the start of: counted as a message's, the safe side)."""
    start = _block_start(window, line)
    prev = window.rfind(b"\n", 0, start - 1) + 1
    if start == 0 or (prev == 0 and lo > 0):  # the line before may be cut short
        return None
    text = window[prev : start - 1].rstrip(b"\r")
    return text.rstrip(b" \t") if text.startswith(b"--") else None


def _block(window: bytes, line: int, field_end: int) -> tuple[bytes, int]:
    """The header block from the field at ``line`` to its blank line, and where the body
    starts (the window's end when the block goes past it)."""
    end = field_end
    while end < len(window):
        nl = window.find(b"\n", end)
        if nl < 0:
            return window[line:], len(window)
        if window[end:nl].strip(b"\r") == b"":
            return window[line:end], nl + 1
        end = nl + 1
    return window[line:], len(window)


def _normal(value: bytes) -> bytes:
    """A Content-Transfer-Encoding value as compared: no comments, quotes or whitespace."""
    while b"(" in value:
        stripped = _COMMENT.sub(b"", value)
        if stripped == value:
            break
        value = stripped
    return _SPACE.sub(b"", value.replace(b'"', b"")).lower()


def _embedded(
    src: Source, start: int, boundary: bytes | None, encoding: bytes, depth: int, budget: _Budget
) -> str | None:
    """Decode an encoded body and look inside it as in a message of its own."""
    if depth >= MAX_DEPTH:
        raise TooComplex("message/rfc822 nested too deep to check")
    data = _body(src, start, boundary, encoding, budget)
    return _find(Source(-1, 0, len(data), data), depth + 1, budget)


def _body(
    src: Source, start: int, boundary: bytes | None, encoding: bytes, budget: _Budget
) -> bytes:
    """An encoded body from ``start`` to the part's closing boundary (else to the end),
    decoded, within DECODE_BUDGET."""
    end = src.size
    if boundary is not None:
        at = find_from(src, max(0, start - 1), b"\n" + boundary)
        end = at if at >= 0 else end
    budget.decoded += end - start
    if budget.decoded > DECODE_BUDGET:
        raise TooComplex("too many encoded parts to decode to check")
    return decode(src.read(start, end), encoding)


def _shown(subtype: bytes) -> str:
    """The subtype for a log line and a header field: printable ASCII, at most 40 characters."""
    return _PRINTABLE.sub(b"?", subtype[:40]).decode("ascii")
