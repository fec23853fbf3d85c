"""``avtool scan --explain``: which MIME part of an infected message carries the signature.

Only for messages clamd already called infected: the message is parsed with the stdlib email
package and every leaf part's decoded payload is scanned on its own. Python-side MIME decoding
costs half of clamd's own scan (docs/notes/clamav.md section 4), which is why it is not done for
every message. Parts are numbered as IMAP numbers them (RFC 3501 section 6.4.5: ``1``, ``2.1``;
the parts of an attached message/rfc822 under its own number).

uuencoded blocks inside text parts are decoded too: clamd finds uuencoded data in a mail but
not in a plain text file (measured with clam.exe), so the text part alone would look clean.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from avtool.engine.verdict import Infected, Verdict
from avtool.scan.mailbox.message import capped, printable

Scan = Callable[[bytes], Verdict]
_BEGIN = re.compile(rb"^begin [0-7]{3,4} (.+?)\r?$", re.M)


@dataclass(frozen=True, slots=True)
class Part:
    """A part that clamd calls infected on its own."""

    number: str  # "2", "2.1"
    content_type: str
    filename: str | None
    names: tuple[str, ...]
    encoding: str = ""  # "uuencoded" for a block found inside a text part


def explain(data: bytes, scan: Scan) -> tuple[Part, ...]:
    """Every leaf part of the message ``data`` that ``scan`` finds infected (may be none: the
    signature may match only the message as a whole)."""
    # compat32 is the lenient parser: it never raises on the broken structure malware favours.
    message = BytesParser(policy=compat32).parsebytes(data)
    found: list[Part] = []
    for number, part in _leaves(message, ""):
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        ctype = part.get_content_type()
        filename = _filename(part)
        verdict = scan(payload)
        if isinstance(verdict, Infected):
            found.append(Part(number, ctype, filename, verdict.names))
        elif part.get_content_maintype() == "text":
            for name, blob in uuencoded(payload):
                verdict = scan(blob)
                if isinstance(verdict, Infected):
                    found.append(Part(number, ctype, printable(name), verdict.names, "uuencoded"))
    return tuple(found)


def structure(data: bytes) -> list[tuple[str, str, str | None]]:
    """(number, content type, file name) of every leaf part of ``data``: the MIME tree that
    ``quarantine show`` prints, numbered as explain() numbers the parts it names."""
    message = BytesParser(policy=compat32).parsebytes(data)
    return [(n, part.get_content_type(), _filename(part)) for n, part in _leaves(message, "")]


def _leaves(message: Message, prefix: str) -> Iterator[tuple[str, Message]]:
    """(number, part) for every leaf below ``message``, whose own number is ``prefix`` ("" for
    the whole message). A non-multipart message's body is part 1 (RFC 3501 6.4.5)."""
    if not message.is_multipart():
        yield (f"{prefix}.1" if prefix else "1"), message
        return
    for i, child in enumerate(message.get_payload(), 1):
        assert isinstance(child, Message)  # noqa: S101 - a multipart payload is a list of parts
        number = f"{prefix}.{i}" if prefix else str(i)
        if child.get_content_type() == "message/rfc822" and child.is_multipart():
            inner = child.get_payload(0)  # compat32: an attached message is a one-item list
            assert isinstance(inner, Message)  # noqa: S101
            yield from _leaves(inner, number)
        elif child.is_multipart():
            yield from _leaves(child, number)
        else:
            yield number, child


def _filename(part: Message) -> str | None:
    """The part's file name for display, from at most DECODE_LIMIT characters of each field
    that can hold one: the email package takes seconds on a long one (60 KB of ";")."""
    fields = Message()
    for header in ("Content-Disposition", "Content-Type"):
        value = part.get(header)
        if value is not None:
            fields[header] = capped(str(value))[0]
    try:
        name = fields.get_filename()
    except (ValueError, LookupError):  # bad RFC 2231 parameters or charset
        name = None
    return printable(name) if name else None


def uuencoded(text: bytes) -> Iterator[tuple[str, bytes]]:
    """(file name, data) of each ``begin MODE NAME`` ... ``end`` block in ``text``."""
    for match in _BEGIN.finditer(text):
        name = match.group(1).decode("utf-8", "replace")
        out = bytearray()
        for line in text[match.end() :].splitlines()[1:]:
            if line.strip() == b"end":
                break
            out += _uu_line(line)
        yield name, bytes(out)


def _uu_line(line: bytes) -> bytes:
    if not line.strip():
        return b""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        # Encoders that drop trailing spaces: decode the length the first byte promises, as
        # the retired uu module did.
        nbytes = (((line[0] - 32) & 63) * 4 + 5) // 3
        try:
            return binascii.a2b_uu(line[:nbytes])
        except binascii.Error:
            return b""
