"""A MIME evasion corpus, built in code: one payload behind each trick that scanners have missed.

``CASES`` maps a name to a builder ``payload -> message bytes``. Each builder hides the payload
behind one trick (odd case in Content-Transfer-Encoding, no closing boundary, message/rfc822
five deep, base64 with stray whitespace, very long lines, uuencode, yEnc, a zip in a zip,
misleading names and types, ...). Built with EICAR every message must be caught; built with a
harmless payload of the same length it must pass, which shows that the test looks at the
decoding and not at something else in the message. No message contains the payload in the
clear (``check_hidden``): catching it means that the scanner decoded the trick.

Sources for the encodings: RFC 2045 (base64, quoted-printable, CTE case-insensitive), RFC 2046
(multipart, message/rfc822), POSIX uuencode (``binascii.b2a_uu``), yEnc 1.3
(http://www.yenc.org/yenc-draft.1.3.txt: byte + 42 mod 256; NUL, LF, CR and ``=`` escaped as
``=`` then byte + 64).
"""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from collections.abc import Callable

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# As long as EICAR, so that every trick sees the same shape; no signature matches it.
HARMLESS = b"This is a harmless attachment for the evasion corpus; nothing to find."[: len(EICAR)]

Builder = Callable[[bytes], bytes]

HEAD = (
    b"Received: from client (127.0.0.1) by test.example\n"
    b"From: sender@example.com\nTo: rcpt@example.test\nSubject: evasion corpus\n"
    b"Message-ID: <evasion@example.com>\nMIME-Version: 1.0\n"
)


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data)


def multipart(parts: list[bytes], boundary: bytes = b"b1", close: bool = True) -> bytes:
    """A multipart/mixed body (without the top headers) of ``parts`` (each: headers, blank
    line, body)."""
    out = b"This is a multi-part message in MIME format.\n"
    for part in parts:
        out += b"--" + boundary + b"\n" + part + b"\n"
    if close:
        out += b"--" + boundary + b"--\n"
    return out


def message(parts: list[bytes], boundary: bytes = b"b1", close: bool = True) -> bytes:
    return (
        HEAD
        + b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\n\n'
        + multipart(parts, boundary, close)
    )


TEXT = b"Content-Type: text/plain; charset=us-ascii\n\nPlease see the attachment.\n"


def attachment(
    payload: bytes,
    *,
    ctype: bytes = b"application/octet-stream",
    name: bytes = b"file.bin",
    cte: bytes = b"base64",
    body: bytes | None = None,
) -> bytes:
    return (
        b"Content-Type: " + ctype + b'; name="' + name + b'"\n'
        b'Content-Disposition: attachment; filename="' + name + b'"\n'
        b"Content-Transfer-Encoding: " + cte + b"\n\n" + (b64(payload) if body is None else body)
    )


def zipped(name: str, data: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        z.writestr(name, data)
    return buf.getvalue()


def yenc(data: bytes, name: str = "eicar.com", line: int = 128) -> bytes:
    """yEnc 1.3 single part, by hand: each byte + 42; NUL, LF, CR, '=' escaped."""
    out, current = bytearray(), bytearray()
    for byte in data:
        c = (byte + 42) % 256
        if c in (0x00, 0x0A, 0x0D, 0x3D):
            current += bytes((0x3D, (c + 64) % 256))
        else:
            current.append(c)
        if len(current) >= line:
            out += current + b"\n"
            current = bytearray()
    if current:
        out += current + b"\n"
    head = f"=ybegin line={line} size={len(data)} name={name}\n".encode()
    tail = f"=yend size={len(data)} crc32={binascii.crc32(data):08x}\n".encode()
    return head + bytes(out) + tail


def uuencode(data: bytes, name: str = "eicar.com") -> bytes:
    lines = [binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45)]
    return f"begin 644 {name}\n".encode() + b"".join(lines) + b"`\nend\n"


# ---- the tricks ------------------------------------------------------------------------------
def plain_base64(payload: bytes) -> bytes:
    """The baseline: a base64 attachment as every mail client writes it."""
    return message([TEXT, attachment(payload)])


def cte_odd_case(payload: bytes) -> bytes:
    """RFC 2045 says the encoding name is case-insensitive; some scanners compared it exactly."""
    return message([TEXT, attachment(payload, cte=b"bAsE64")])


def cte_padded(payload: bytes) -> bytes:
    """Encoding name with a comment and odd spacing around it (RFC 822 comments are allowed)."""
    return message([TEXT, attachment(payload, cte=b"  BASE64 (binary follows)  ")])


def no_closing_boundary(payload: bytes) -> bytes:
    """The last part is never closed: the message simply ends."""
    return message([TEXT, attachment(payload)], close=False)


def nested_rfc822(payload: bytes, depth: int = 5) -> bytes:
    """The attachment inside message/rfc822 inside message/rfc822 ... ``depth`` levels."""
    inner = message([TEXT, attachment(payload)], boundary=b"level0")
    for level in range(1, depth + 1):
        wrapped = (
            b'Content-Type: message/rfc822; name="forward.eml"\n'
            b"Content-Disposition: attachment\n\n" + inner
        )
        inner = message([TEXT, wrapped], boundary=f"level{level}".encode())
    return inner


def base64_stray_whitespace(payload: bytes) -> bytes:
    """Base64 with spaces, tabs and blank-looking junk inside and between lines (RFC 2045
    6.8: characters outside the alphabet must be ignored)."""
    text = base64.b64encode(payload)
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    body = b" \t".join(chunks[:4]) + b"\n  " + b"\t \n".join(chunks[4:]) + b"\n"
    return message([TEXT, attachment(payload, body=body)])


def base64_one_long_line(payload: bytes) -> bytes:
    """The payload, then 300 KB of filler, in one base64 line of about 400,000 characters
    (RFC 2045 limits lines to 76)."""
    body = base64.b64encode(payload + b"\n" + b"A" * 300_000) + b"\n"
    return message([TEXT, attachment(payload, body=body)])


def long_header_lines(payload: bytes) -> bytes:
    """A 200 KB header line and a 100 KB text line before the attachment."""
    head = b"X-Filler: " + b"x" * 200_000 + b"\n"
    text = b"Content-Type: text/plain\n\n" + b"y" * 100_000 + b"\n"
    msg = message([text, attachment(payload)])
    return msg.replace(b"MIME-Version:", head + b"MIME-Version:", 1)


def quoted_printable_soft_breaks(payload: bytes) -> bytes:
    """Quoted-printable with a soft line break after every 3 characters and every character
    escaped, so that no run of the payload shows in the clear."""
    encoded = b"".join(b"=%02X" % c for c in payload)
    lines = [encoded[i : i + 9] for i in range(0, len(encoded), 9)]
    body = b"=\n".join(lines) + b"\n"
    return message(
        [TEXT, attachment(payload, ctype=b"text/plain", cte=b"quoted-printable", body=body)]
    )


def uuencoded_body(payload: bytes) -> bytes:
    """Old-style: a uuencoded file in a plain text body, no MIME at all."""
    return (
        HEAD.replace(b"MIME-Version: 1.0\n", b"") + b"\nHere is the file.\n\n" + uuencode(payload)
    )


def uuencoded_part(payload: bytes) -> bytes:
    """uuencode as a MIME part's Content-Transfer-Encoding (x-uuencode)."""
    return message([TEXT, attachment(payload, cte=b"x-uuencode", body=uuencode(payload))])


def yenc_body(payload: bytes) -> bytes:
    """yEnc in a plain text body, no MIME, as yEnc posting tools send it by mail."""
    return HEAD.replace(b"MIME-Version: 1.0\n", b"") + b"\n" + yenc(payload)


def yenc_text_part(payload: bytes) -> bytes:
    """yEnc inside a text/plain MIME part with no Content-Transfer-Encoding."""
    return message([TEXT, b"Content-Type: text/plain\n\n" + yenc(payload)])


def yenc_part(payload: bytes) -> bytes:
    """yEnc announced as the part's encoding (Content-Transfer-Encoding: x-yencode)."""
    return message([TEXT, attachment(payload, cte=b"x-yencode", body=yenc(payload))])


def zip_in_zip(payload: bytes) -> bytes:
    """eicar.com in inner.zip in outer.zip, base64-attached."""
    outer = zipped("inner.zip", zipped("eicar.com", payload))
    return message([TEXT, attachment(outer, ctype=b"application/zip", name=b"outer.zip")])


def misleading_image(payload: bytes) -> bytes:
    """Named and typed as a JPEG picture, inline."""
    part = attachment(payload, ctype=b"image/jpeg", name=b"holiday.jpg")
    return message([TEXT, part.replace(b"attachment;", b"inline;", 1)])


def misleading_text(payload: bytes) -> bytes:
    """Typed text/plain and named readme.txt, but base64 encoded."""
    return message([TEXT, attachment(payload, ctype=b"text/plain", name=b"readme.txt")])


def misleading_zip_as_pdf(payload: bytes) -> bytes:
    """A zip named and typed as a PDF document."""
    data = zipped("invoice.pdf", payload)
    return message([TEXT, attachment(data, ctype=b"application/pdf", name=b"invoice.pdf")])


def single_part_no_multipart(payload: bytes) -> bytes:
    """The whole message is the attachment: top-level base64 with a misleading type."""
    return (
        HEAD + b'Content-Type: text/html; charset="utf-8"\n'
        b"Content-Transfer-Encoding: base64\n\n" + b64(payload)
    )


def folded_content_type(payload: bytes) -> bytes:
    """The boundary parameter on a folded continuation line (RFC 5322 folding)."""
    return message([TEXT, attachment(payload)]).replace(
        b'multipart/mixed; boundary="b1"', b'multipart/mixed;\n\tboundary="b1"', 1
    )


def rfc2231_boundary(payload: bytes) -> bytes:
    """The boundary split into RFC 2231 continuations: boundary*0="b"; boundary*1="1"."""
    return message([TEXT, attachment(payload)]).replace(
        b'boundary="b1"', b'boundary*0="b"; boundary*1="1"', 1
    )


def upper_case_headers(payload: bytes) -> bytes:
    """CONTENT-TYPE and CONTENT-TRANSFER-ENCODING: field names are case-insensitive."""
    part = attachment(payload).replace(b"Content-Transfer-Encoding", b"CONTENT-TRANSFER-ENCODING")
    return message([TEXT, part.replace(b"Content-Type", b"CONTENT-TYPE")])


def crlf_line_endings(payload: bytes) -> bytes:
    """CRLF everywhere, as on the wire."""
    return message([TEXT, attachment(payload)]).replace(b"\n", b"\r\n")


def base64_no_padding(payload: bytes) -> bytes:
    """Base64 with its trailing '=' padding cut off."""
    body = base64.b64encode(payload).rstrip(b"=") + b"\n"
    return message([TEXT, attachment(payload, body=body)])


def base64_junk_after(payload: bytes) -> bytes:
    """Characters outside the base64 alphabet after the data (RFC 2045 6.8: ignore them)."""
    body = b64(payload) + b"!!!! not base64 **** ~~~~\n"
    return message([TEXT, attachment(payload, body=body)])


def fake_close_in_preamble(payload: bytes) -> bytes:
    """A closing delimiter line in the preamble, before the first part."""
    msg = message([TEXT, attachment(payload)])
    return msg.replace(b"This is a multi-part message in MIME format.\n", b"--b1--\n", 1)


def rfc2231_filename(payload: bytes) -> bytes:
    """A double-extension name in RFC 2231 encoding: invoice.pdf.exe."""
    part = attachment(payload).replace(
        b'filename="file.bin"', b"filename*=UTF-8''invoice%2Epdf%2Eexe"
    )
    return message([TEXT, part])


def two_cte_headers(payload: bytes) -> bytes:
    """Content-Transfer-Encoding given twice: 7bit, then base64."""
    part = attachment(payload).replace(
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64",
    )
    return message([TEXT, part])


def cte_without_content_type(payload: bytes) -> bytes:
    """A part with an encoding but no Content-Type (so text/plain by default)."""
    return message([TEXT, b"Content-Transfer-Encoding: base64\n\n" + b64(payload)])


def message_partial(payload: bytes) -> bytes:
    """The whole message as fragment 1 of 1 of a message/partial (RFC 2046 5.2.2)."""
    inner = message([TEXT, attachment(payload)])
    return (
        HEAD
        + b'Content-Type: message/partial; id="frag@example.com"; number=1; total=1\n\n'
        + (inner)
    )


CASES: dict[str, Builder] = {
    f.__name__: f
    for f in (
        plain_base64,
        cte_odd_case,
        cte_padded,
        no_closing_boundary,
        nested_rfc822,
        base64_stray_whitespace,
        base64_one_long_line,
        long_header_lines,
        quoted_printable_soft_breaks,
        uuencoded_body,
        uuencoded_part,
        yenc_body,
        yenc_text_part,
        yenc_part,
        zip_in_zip,
        misleading_image,
        misleading_text,
        misleading_zip_as_pdf,
        single_part_no_multipart,
        folded_content_type,
        rfc2231_boundary,
        upper_case_headers,
        crlf_line_endings,
        base64_no_padding,
        base64_junk_after,
        fake_close_in_preamble,
        rfc2231_filename,
        two_cte_headers,
        cte_without_content_type,
        message_partial,
    )
}


# Messages whose own type is message/* (not rfc822 and two others): clamd answers OK without
# looking at their body (avtool/courier/unscannable.py), so avtool must call them unchecked.
# Each builder puts ``inner``, a whole message holding the payload, behind one variant.
FRAGMENT_ID = b'; id="frag@example.com"; number=1; total=1'


def _inner(payload: bytes) -> bytes:
    return message([TEXT, attachment(payload)])


def _top(content_type: bytes) -> Builder:
    def build(payload: bytes) -> bytes:
        return HEAD + b"Content-Type: " + content_type + b"\n\n" + _inner(payload)

    return build


def _in_rfc822(head: bytes, cte: bytes = b"") -> Builder:
    """A multipart whose second part is a message/rfc822 (encoded with ``cte``) whose own
    header has ``head`` (Content-Type lines)."""

    def build(payload: bytes) -> bytes:
        embedded = HEAD + head + b"\n" + _inner(payload)
        if cte == b"base64":
            embedded = b64(embedded)
        elif cte == b"quoted-printable":
            embedded = binascii.b2a_qp(embedded).replace(b"message/partial", b"message/=70artial")
        part = b"Content-Type: message/rfc822\n"
        part += b"Content-Transfer-Encoding: " + cte + b"\n" if cte else b""
        return message([TEXT, part + b"\n" + embedded], boundary=b"outer")

    return build


def _padded(payload: bytes) -> bytes:
    """The fragment in a message/rfc822 part after 2 MiB of text: past any first read."""
    pad = b"Content-Type: text/plain\n\n" + (b"x" * 99 + b"\n") * ((2 << 20) // 100)
    embedded = HEAD + b"Content-Type: message/partial" + FRAGMENT_ID + b"\n\n" + _inner(payload)
    return message([TEXT, pad, b"Content-Type: message/rfc822\n\n" + embedded], b"outer")


def _astride(payload: bytes) -> bytes:
    """A top header longer than the 8 KiB first looked at, with the message/partial field
    across byte 8192 (its name starts 6 bytes before), in a message bigger than 64 KiB: one
    that is cut in pieces rather than searched whole. unscannable.py read the first 8 KiB
    without the 11 bytes after them that a name across the cut needs, and missed it."""
    relays = b"".join(
        b"Received: from relay%d.example.net by mx.example.org\n" % i for i in range(90)
    )
    head = HEAD + relays
    head += b"X-Pad: " + b"a" * (8192 - 6 - len(head) - 8) + b"\n"
    field = b"Content-Type: message/partial" + FRAGMENT_ID + b"\n\n"
    filler = (b"x" * 99 + b"\n") * 700  # the epilogue, after the inner message
    return head + field + _inner(payload) + b"\n" + filler


def _encoded_part(head: bytes) -> Builder:
    """A multipart whose second part, with header ``head``, is a whole message/partial mail
    holding the payload, in base64: clamd decodes it, takes it for mail and answers OK
    whatever the part's type (by trial, ClamAV 1.4.6)."""

    def build(payload: bytes) -> bytes:
        fragment = _top(b"message/partial" + FRAGMENT_ID)(payload)
        return message([TEXT, head + b"\n" + b64(fragment)], boundary=b"outer")

    return build


def _in_zip(*names: str, method: int = zipfile.ZIP_DEFLATED) -> Builder:
    """A multipart whose second part is a zip (base64) holding a whole message/partial mail
    with the payload as ``names[-1]``, in zips named by the names before it: clamd opens the
    archives, takes the member for mail by its bytes and answers OK (by trial, ClamAV 1.4.6)."""

    def build(payload: bytes) -> bytes:
        data = _top(b"message/partial" + FRAGMENT_ID)(payload)
        for name in reversed(names):
            data = zipped(name, data, method)
        head = (
            b'Content-Type: application/zip; name="files.zip"\nContent-Transfer-Encoding: base64\n'
        )
        return message([TEXT, head + b"\n" + b64(data)], boundary=b"outer")

    return build


FRAGMENTS: dict[str, Builder] = {
    "first": _top(b"message/partial" + FRAGMENT_ID),
    "second_content_type": lambda p: (
        HEAD + b"Content-Type: text/plain\nContent-Type: message/partial\n\n" + _inner(p)
    ),
    "quoted_whole": _top(b'"message/partial"' + FRAGMENT_ID),
    "quoted_subtype": _top(b'message/"partial"' + FRAGMENT_ID),
    "upper_case": _top(b"MESSAGE/PARTIAL" + FRAGMENT_ID),
    "spaces": _top(b"message / partial" + FRAGMENT_ID),
    "comment": _top(b"message/partial (x)" + FRAGMENT_ID),
    "comment_inside": _top(b"message/part(x)ial" + FRAGMENT_ID),
    "folded": _top(b"message/\n partial" + FRAGMENT_ID),
    "empty_first": lambda p: HEAD + b"Content-Type:\nContent-Type: message/partial\n\n" + _inner(p),
    "garbage_first": lambda p: (
        HEAD + b"Content-Type: ;;(\nContent-Type: message/partial\n\n" + _inner(p)
    ),
    "crlf": lambda p: _top(b"message/partial" + FRAGMENT_ID)(p).replace(b"\n", b"\r\n"),
    "other_subtype": _top(b"message/x-anything"),
    "external_body": _top(b"message/external-body; access-type=x-none"),
    "in_rfc822": _in_rfc822(b"Content-Type: message/partial" + FRAGMENT_ID + b"\n"),
    "in_rfc822_second": _in_rfc822(b"Content-Type: text/plain\nContent-Type: message/partial\n"),
    "in_rfc822_base64": _in_rfc822(b"Content-Type: message/partial\n", b"base64"),
    "in_rfc822_qp": _in_rfc822(b"Content-Type: message/partial\n", b"quoted-printable"),
    "in_top_rfc822": lambda p: (
        HEAD + b"Content-Type: message/rfc822\n\n" + _top(b"message/partial")(p)
    ),
    "in_rfc822_after_2m": _padded,
    "astride_the_first_8k": _astride,
    "eml_attachment": _encoded_part(
        b'Content-Type: application/octet-stream; name="fwd.eml"\n'
        b"Content-Transfer-Encoding: base64\n"
    ),
    "eml_as_text": _encoded_part(b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n"),
    "eml_no_type": _encoded_part(b"Content-Transfer-Encoding: base64\n"),
    "rfc822_encoding_first": _encoded_part(
        b"Content-Transfer-Encoding: base64\nContent-Type: message/rfc822\n"
    ),
    "eml_in_zip": _in_zip("fwd.eml"),
    "eml_in_zip_stored": _in_zip("fwd.eml", method=zipfile.ZIP_STORED),
    "eml_in_zip_no_name": _in_zip("data"),
    "eml_in_zip_in_zip": _in_zip("inner.zip", "fwd.eml"),
}


def check_hidden(msg: bytes, payload: bytes) -> None:
    """Raise if any 16-byte run of ``payload`` appears in ``msg`` as it is."""
    for i in range(len(payload) - 15):
        if payload[i : i + 16] in msg:
            raise AssertionError(f"payload visible in the clear at {msg.find(payload[i : i + 16])}")


def write_corpus(directory: str) -> list[str]:
    """Write every case with EICAR to ``directory`` (for trying it with clamdscan by hand)."""
    import os

    paths = []
    for name, build in CASES.items():
        path = os.path.join(directory, f"{name}.eml")
        with open(path, "wb") as f:
            f.write(build(EICAR))
        paths.append(path)
    return paths


if __name__ == "__main__":
    import sys

    for written in write_corpus(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(written)
