"""Which messages clamd answers OK for without looking (avtool/courier/unscannable.py).

The corpus of tricks is tests/support/evasion.py's FRAGMENTS; test_evasion.py shows, with a real
clamd, that clamd answers OK for each of them and that the daemon calls them unchecked."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from avtool.courier import fieldsearch, unscannable
from avtool.courier.unscannable import find, find_in
from tests.support import evasion

PARTIAL = unscannable.PARTIAL
HEAD = b"From: a@b\nSubject: s\n"


@pytest.mark.parametrize("name", list(evasion.FRAGMENTS))
def test_every_fragment_is_found(name: str) -> None:
    found = find_in(evasion.FRAGMENTS[name](evasion.HARMLESS))
    assert found is not None and found.startswith("message/")


@pytest.mark.parametrize("name", list(evasion.FRAGMENTS))
def test_every_fragment_is_found_after_a_big_attachment(name: str) -> None:
    """Past the first 64 KiB, where base64 bodies are skipped (not searched for fields)."""
    fragment = evasion.FRAGMENTS[name](evasion.HARMLESS)
    big = evasion.attachment(os.urandom(200_000))
    forwarded = b"Content-Type: message/rfc822\n\n" + fragment
    found = find_in(evasion.message([evasion.TEXT, big, big, forwarded], boundary=b"big"))
    assert found is not None and found.startswith("message/")


_TOP = [
    (b'Content-Type: message/partial; id="a@b"; number=1; total=2\n', PARTIAL),
    (b"CONTENT-TYPE:Message/Partial;\n id=x\n", PARTIAL),
    (b"Content-Type: message/partial (a fragment)\n", PARTIAL),
    (b"Content-Type:\n message/partial; number=1\n", PARTIAL),
    (b"Content-type : message/partial\n", PARTIAL),  # clamd: not a field; we: the safe side
    (b"Content-Type: text/plain\nContent-Type: message/partial\n", PARTIAL),  # the second
    (b"Content-Type: message/partial\nContent-Type: text/plain\n", PARTIAL),
    (b"Content-Type: message/(a (nested) comment)partial\n", PARTIAL),
    (b'Content-Type: "message"/partial\n', PARTIAL),
    (b"Content-Type: mess age/partial\n", PARTIAL),
    (b"Content-Type: message/foo\n", "message/foo: " + unscannable.NOT_SCANNED),
    (b"Content-Type: message/\n", "message/: " + unscannable.NOT_SCANNED),
    (b"Content-Type: message/ rfc822\n", "message/?rfc822: " + unscannable.NOT_SCANNED),
    (b'Content-Type: message/"rfc822"\n', 'message/"rfc822": ' + unscannable.NOT_SCANNED),
    (b"Content-Type: message/rfc822x\n", "message/rfc822x: " + unscannable.NOT_SCANNED),
    (b"Content-Type: message/p\x1b[2Jx\n", "message/p?[2jx: " + unscannable.NOT_SCANNED),
    # what clamd scans, and what is not a message's own type
    (b"Content-Type: message/rfc822\n", None),
    (b"Content-Type: Message/RFC822 (forwarded)\n", None),
    (b"Content-Type: message/rfc(x)822\n", None),
    (b'Content-Type: "message/rfc822"\n', None),
    (b"Content-Type: message/delivery-status\n", None),
    (b"Content-Type: message/disposition-notification\n", None),
    (b"Content-Type: message\n", None),
    (b"Content-Type: message;partial\n", None),
    (b"Subject: partial\nContent-Type: text/plain\n", None),
    (b"Content-Type: multipart/mixed; boundary=message/partial\n", None),
    (b"X-Note: message/partial\n", None),
    (b"X-Content-Type: message/partial\n", None),
    (b"Subject: x\n", None),
]


@pytest.mark.parametrize(("header", "found"), _TOP)
def test_the_top_header(header: bytes, found: str | None) -> None:
    assert find_in(HEAD + header + b"\nbody message/partial\n") == found


def _multipart(*parts: bytes) -> bytes:
    body = b"".join(b"--o\n" + part + b"\n" for part in parts)
    return HEAD + b'Content-Type: multipart/mixed; boundary="o"\n\n' + body + b"--o--\n"


INNER = b"From: c@d\nContent-Type: message/partial; number=1\n\nfragment\n"
NOT_FRAGMENTS = {
    # A message/* part of a multipart is scanned by clamd (test_evasion.py): not a fragment.
    "part": _multipart(b"Content-Type: text/plain\n\nhi", b"Content-Type: message/partial\n\nx"),
    "report": _multipart(
        b"Content-Type: text/plain\n\nYour message could not be delivered.",
        b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n",
        b"Content-Type: message/rfc822\n\nFrom: a@b\nSubject: s\n\nthe message\n",
    ),
    "feedback": _multipart(
        b"Content-Type: message/feedback-report\n\nFeedback-Type: abuse\n",
        b"Content-Type: message/global-headers\n\nFrom: a@b\n",
    ),
    "mid_line": HEAD + b"\nIt says Content-Type: message/partial in the text.\n",
    "forwarded_base64": _multipart(
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(b"From: c@d\nContent-Type: text/plain\n\npartial\n")
    ),
    "plain": HEAD + b"\nContent-Type is a header field; partial is a word.\n",
    "eml_attachment": _multipart(
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(b"From: c@d\nContent-Type: multipart/mixed; boundary=i\n\n--i\n\nx")
    ),
    "eml_in_zip": _multipart(
        b"Content-Type: application/zip\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(evasion.zipped("fwd.eml", b"From: c@d\nSubject: s\n\nforwarded\n"))
    ),
    "text_in_zip": _multipart(
        b"Content-Type: application/zip\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(evasion.zipped("a.txt", b"Name: value\n" * 100 + bytes(range(256))))
    ),
    "text_with_fields": _multipart(
        b"Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n"
        b"Name: value\nContent-Type: text/csv\n"
    ),
}


@pytest.mark.parametrize("name", list(NOT_FRAGMENTS))
def test_what_clamd_looks_at_is_left_alone(name: str) -> None:
    assert find_in(NOT_FRAGMENTS[name]) is None


def test_a_fragment_in_a_forwarded_message() -> None:
    for cte, body in [
        (b"7bit", INNER),
        (b"base64", base64.encodebytes(INNER)),
        (b"quoted-printable", INNER.replace(b"partial", b"=70artial")),
        (b"BASE64 (comment)", base64.encodebytes(INNER)),
    ]:
        part = b"Content-Type: message/rfc822\nContent-Transfer-Encoding: " + cte + b"\n\n"
        message = _multipart(b"Content-Type: text/plain\n\nhi", part + body)
        assert find_in(message) == PARTIAL, cte
        assert find_in(message.replace(b"\n", b"\r\n")) == PARTIAL, cte


def test_encoded_messages_are_decoded_only_to_a_bound() -> None:
    message = INNER
    for _ in range(unscannable.MAX_DEPTH):
        message = (
            b"From: a@b\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(message)
        )
    assert find_in(message) == PARTIAL  # five deep
    deeper = b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
    assert find_in(deeper + base64.encodebytes(message)) == (
        "message/rfc822 nested too deep to check"
    )


def test_hostile_shapes_cost_little() -> None:
    cases = {
        "fields": HEAD + b"\n" + b"Content-Type: text/plain\n" * 200_000,
        "message_fields": _multipart(*[b"Content-Type: message/rfc822\n\nFrom: a\n"] * 2_000),
        "long_block": HEAD + b"\n" + b"X: y\n" * 400_000 + b"Content-Type: message/rfc822\n",
        "blank_lines": HEAD + b"\n" + b"\n" * 5_000_000,
        "long_value": HEAD + b"Content-Type: m" + b" " * 5_000_000 + b"\n\n",
        "dashes": HEAD + b"\n" + b"--\n" * 1_000_000,
        "base64_pieces": HEAD + b"\n" + b"--\nContent-Transfer-Encoding: base64\n\nQQ==\n" * 50_000,
        "hyphens_mid": HEAD
        + b"\n--\nContent-Transfer-Encoding: base64\n\n"
        + b"a-" * 1_500_000
        + b"\n--\nContent-Type: message/rfc822\n\nContent-Type: message/foo\n\n",
        "hyphens": HEAD + b"\n" + b"--\nContent-Transfer-Encoding: base64\n\n" + b"-" * 3_000_000,
    }
    for name, message in cases.items():
        started = time.monotonic()
        find_in(message)
        assert time.monotonic() - started < 1.0, name
    assert find_in(cases["fields"]) == "too many Content-Type fields to check"
    assert find_in(cases["hyphens_mid"]) == "message/foo: " + unscannable.NOT_SCANNED
    assert find_in(cases["message_fields"]) == "too many message/* and multipart/* parts to check"


def test_a_file_past_the_first_read(tmp_path: Path) -> None:
    """From a file: the first bytes given, the rest read with pread; the offset left alone."""
    message = evasion.FRAGMENTS["in_rfc822_after_2m"](evasion.HARMLESS)
    path = tmp_path / "msg"
    path.write_bytes(b"mbox junk\n" + message)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        head = os.pread(fd, 1 << 16, 10)
        assert find(fd, len(message), head, base=10) == PARTIAL
        assert find(fd, len(message) - 100_000, head, base=10) is None  # the range only
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7
    finally:
        os.close(fd)


def test_long_headers_and_odd_pieces() -> None:
    received = b"".join(
        b"Received: from h%d by example.net; Mon, 1 Jan 2024\n" % i for i in range(600)
    )
    top = HEAD + b'Content-Type: multipart/mixed; boundary="o"\n' + received  # 30 KB after it
    inner = b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n" + received
    part = inner + b"\n" + base64.encodebytes(INNER)
    assert find_in(top + b"\n--o\nContent-Type: text/plain\n\nhi\n--o--\n") is None
    assert find_in(top + b"\n--o\n" + part + b"--o--\n") == PARTIAL
    # A "--" line inside a part's header: the base64 declared after it hides nothing.
    big = evasion.attachment(os.urandom(100_000))
    odd = b"--o\nContent-Type: message/rfc822\n--x\nContent-Transfer-Encoding: base64\n\n"
    message = _multipart(big) + odd + INNER
    assert find_in(message) == PARTIAL


@pytest.mark.parametrize("hyphens", [0, 10, 40, 100_000])
@pytest.mark.parametrize("pad", [0, 100_000])
def test_the_field_name_in_any_case_after_any_text(hyphens: int, pad: int) -> None:
    """Found through its "-" one by one, or lower-cased when "-" are many; small or big."""
    text = b"Content-Type: text/plain\n\n" + b"a-b " * hyphens + b"x" * pad + b"\n"
    fragment = b"From: c@d\ncOnTeNt-TyPe: message/partial\n\nx\n"
    message = _multipart(text, b"Content-Type: message/rfc822\n\n" + fragment)
    assert find_in(message) == PARTIAL
    assert find_in(message.replace(b"cOnTeNt-TyPe", b"Content-Typo")) is None


def _shapes() -> list[bytes]:
    """Every message of this file and evasion.py, and the edges of _dismissed's window: the
    field's name at a line's start or not, blanks before and after the colon, a value that
    starts past FORWARD, CR LF lines, any case."""
    messages = [HEAD + h + b"\nbody\n" for h, _ in _TOP] + list(NOT_FRAGMENTS.values())
    messages += [build(evasion.HARMLESS) for build in evasion.FRAGMENTS.values()]
    for value in (b"message/partial", b"text/plain", b"Multipart/mixed", b"(x)message/foo"):
        for before, after in [
            (b"", b" "), (b" \t", b"\t"), (b"", b"\n "), (b"x ", b" "), (b"", b" " * 9000),
            (b"", b" " * (unscannable.FORWARD - 20)), (b" " * 9000, b""), (b"", b""),
        ]:  # fmt: skip
            for name in (b"Content-Type", b"CONTENT-TYPE", b"content-type"):
                for colon in (b":", b" :", b"\t:", b" "):
                    field = before + name + colon + after + value
                    messages.append(HEAD + field + b"\n\nbody\n")
                    messages.append(HEAD + b"Subject: s\n" + field + b"\r\n\r\nbody\r\n")
    return messages


def test_the_quick_dismissal_agrees_with_the_whole_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """_dismissed spares most fields the window's copy; it must never dismiss one that
    _check would go on to look at (nor miss one it would dismiss: same verdicts)."""
    shapes = _shapes()
    quick = [find_in(m) for m in shapes]
    monkeypatch.setattr(unscannable, "_dismissed", lambda *_: False)
    assert quick == [find_in(m) for m in shapes]
    assert sum(v is not None for v in quick) > 50  # the shapes reach the verdicts both ways


@settings(max_examples=2000)
@given(
    st.lists(st.sampled_from([b"\n", b"-", b"--", b"\n--", b"a", b"\r\n"]), max_size=200),
    st.integers(0, 400),
    st.integers(0, 400),
)
@example([b"a-"] * 64 + [b"\n--"], 0, 400)  # the 65th "-" starts the line: the plain search's
@example([b"a-"] * 63 + [b"\n--"], 0, 400)  # first, and the 64th, the last looked at alone
def test_the_dash_line_search_is_a_plain_find(pieces: list[bytes], start: int, end: int) -> None:
    """dash_line (memchr for "-", then the plain search past 64 of them) answers exactly what
    the plain search would, where the "-" are few, many, or in runs, and at the bounds."""
    data = b"".join(pieces)
    assert fieldsearch.dash_line(data, start, end) == data.find(b"\n--", start, end)


@pytest.mark.parametrize("edge", [8 << 10, 24 << 10])  # the first two chunks of a long header
@pytest.mark.parametrize("before", range(14))
def test_a_field_name_across_a_chunk_edge(edge: int, before: int) -> None:
    """A big message whose top header is longer than FORWARD is searched in growing chunks
    from its first byte; a field whose name starts ``before`` bytes before a chunk's end is
    found all the same (the first chunk once lacked the bytes after its end)."""
    pad = b"X-Pad: " + b"a" * (edge - before - len(HEAD) - 8) + b"\n"
    message = HEAD + pad + b"Content-Type: message/partial\n\n" + b"x" * 99_999 + b"\n"
    assert message.find(b"Content-Type: message/partial") == edge - before
    assert find_in(message) == PARTIAL


@pytest.mark.parametrize("edge", [8 << 10, 24 << 10])
@pytest.mark.parametrize("before", [1, 12, 20, 24, 25])
def test_an_encoding_name_across_a_chunk_edge(edge: int, before: int) -> None:
    """The same for the longer name, Content-Transfer-Encoding: a message that is all an
    encoded fragment, its encoding field across a chunk's end, is found (each chunk is read
    with the bytes that name needs past its end)."""
    pad = b"X-Pad: " + b"a" * (edge - before - len(HEAD) - 8) + b"\n"
    fragment = b"From: c@d\nContent-Type: message/partial; id=x\n\n" + b"x" * 99_999 + b"\n"
    message = HEAD + pad + b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(fragment)
    assert message.find(b"Content-Transfer-Encoding") == edge - before
    assert find_in(message) == PARTIAL


@settings(max_examples=500)
@given(
    st.binary(max_size=3000),
    st.integers(1, 120),
    st.lists(st.tuples(st.integers(0, 4000), st.sampled_from([b"*", b"=", b"\n", b"QQ=="]))),
)
def test_a_base64_body_is_decoded_whole(data: bytes, width: int, junk: list) -> None:  # type: ignore[type-arg]
    """fieldsearch.decode reads base64 as one stream, as clamd and mail readers do, whatever
    the line length (a line not a multiple of 4 long once decoded to nothing); with junk or a
    padding inside, line by line, a bad line empty."""
    text = base64.b64encode(data)
    body = b"\n".join(text[i : i + width] for i in range(0, len(text), width)) + b"\n"
    assert fieldsearch.decode(body, b"base64") == data
    for at, piece in junk:
        body = body[:at] + piece + body[at:]
    assert isinstance(fieldsearch.decode(body, b"base64"), bytes)


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        (b"base64", True),
        (b" BASE64 ", True),
        (b"(a comment) base64", True),
        (b'"base64"', True),
        (b"\n base64", True),  # folded onto the next line
        (b"Base64 (b)", True),
        (b"7bit", False),
        (b"binary", False),
        (b"x-uuencode", False),
        (b"bas64", False),
    ],
)
@pytest.mark.parametrize("big", [False, True])
def test_every_way_to_write_the_encoding_of_an_attached_fragment(
    value: bytes, decoded: bool, big: bool
) -> None:
    """The quick look in place (a value that starts with a letter but b or q is no encoding to
    decode) and the whole one agree: an attached fragment is found however its encoding is
    written, and only when it is base64; past the first 64 KiB too."""
    fragment = b"From: c@d\nContent-Type: message/partial; id=x\n\n" + INNER
    pad = (
        b"Content-Type: text/plain\n\n" + b"x" * 99_999 + b"\n"
        if big
        else b"Content-Type: text/plain\n\nhi\n"
    )
    part = b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: " + value + b"\n\n"
    message = _multipart(pad, part + base64.encodebytes(fragment))
    assert find_in(message) == (PARTIAL if decoded else None)
