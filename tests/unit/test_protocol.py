"""The courierfilter request/reply protocol: tables of byte strings, then properties.

Requests as Courier writes them (courierfilter(8); docs/notes/courier.md section 3): data path, one
or more control paths, a blank line, each line ended by a single LF.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avtool.courier.protocol import (
    MAX_REPLY_LINE,
    ProtocolError,
    Reply,
    Request,
    RequestReader,
    format_reply,
    parse_request,
)
from avtool.errors import AvtoolError

D = "/var/lib/courier/tmp/179554/D1442023"
C = "/var/lib/courier/tmp/179554/1795549736.5408.vm"

VALID = [
    pytest.param(f"{D}\n{C}\n\n".encode(), Request(D, (C,)), id="courier-as-observed"),
    pytest.param(b"/d\n/c1\n/c2\n/c3\n\n", Request("/d", ("/c1", "/c2", "/c3")), id="3-controls"),
    pytest.param(b"d\nc\n\n", Request("d", ("c",)), id="relative-is-parsed"),
    pytest.param(b"/a b\n/c d\n\n", Request("/a b", ("/c d",)), id="spaces"),
    pytest.param("/tmp/é\n/tmp/ñ\n\n".encode(), Request("/tmp/é", ("/tmp/ñ",)), id="utf8-paths"),
]

# (raw, code, words in str(error)); parse_request's default limits unless noted.
INVALID = [
    pytest.param(b"", 432, "incomplete", id="empty"),
    pytest.param(b"/d", 432, "incomplete", id="no-newline"),
    pytest.param(b"/d\n", 432, "incomplete", id="data-only"),
    pytest.param(b"/d\n/c\n", 432, "incomplete", id="no-blank-line"),
    pytest.param(b"/d\n/c", 432, "incomplete", id="cut-control"),
    pytest.param(b"\n", 500, "empty data file path", id="blank-first"),
    pytest.param(b"\n/c\n\n", 500, "empty data file path", id="blank-then-more"),
    pytest.param(b"/d\n\n", 500, "no control file", id="no-control"),
    pytest.param(b"/d\0\n/c\n\n", 500, "NUL byte (at byte 2)", id="nul-in-data"),
    pytest.param(b"/d\n/c\0\n\n", 500, "NUL byte (at byte 5)", id="nul-in-control"),
    pytest.param(b"\0", 500, "NUL byte (at byte 0)", id="nul-first-no-newline"),
    pytest.param(b"/d\xff\n/c\n\n", 500, "not UTF-8", id="latin1-data"),
    pytest.param(b"/d\n/\xc3\n\n", 500, "not UTF-8", id="cut-utf8-control"),
    pytest.param(b"/d\r\n/c\r\n\r\n", 500, "control character", id="crlf"),
    pytest.param(b"/d\x1b[0m\n/c\n\n", 500, "control character", id="escape"),
    pytest.param(b"/d\n/c\n\nmore", 500, "data after the blank line", id="trailing"),
    pytest.param(b"/" + b"a" * 4096 + b"\n/c\n\n", 500, "longer than 4096", id="long-data"),
    pytest.param(b"/d\n" + b"/c\n" * 1001 + b"\n", 500, "more than 1000 control", id="many"),
]


def outcome(reader: RequestReader, chunks: list[bytes]) -> tuple[object, ...]:
    """What a reader makes of ``chunks``: the request and remainder, the error, or 'more'."""
    try:
        for i, chunk in enumerate(chunks):
            request = reader.feed(chunk)
            if request is not None:
                for rest in chunks[i + 1 :]:
                    reader.feed(rest)
                return ("ok", request, reader.remainder)
    except ProtocolError as e:
        return ("error", str(e), e.reply)
    return ("more",)


@pytest.mark.parametrize("raw, expected", VALID)
def test_valid_requests(raw: bytes, expected: Request) -> None:
    assert parse_request(raw) == expected


@pytest.mark.parametrize("raw, expected", VALID)
def test_valid_requests_byte_by_byte(raw: bytes, expected: Request) -> None:
    reader = RequestReader()
    results = [reader.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert results[-1] == expected
    assert all(r is None for r in results[:-1])  # not a byte early


@pytest.mark.parametrize("raw, code, words", INVALID)
def test_invalid_requests(raw: bytes, code: int, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(raw)
    assert info.value.reply.code == code
    assert words in str(info.value)
    assert isinstance(info.value, AvtoolError)
    assert format_reply(info.value.reply).startswith(f"{code} ".encode())


def test_replies_name_the_reason_but_not_the_path() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(b"/secret/path\xff\n/c\n\n")
    assert info.value.reply == Reply(500, "5.3.0 Malformed mail filter request: path is not UTF-8")
    assert "/secret/path" in str(info.value)  # the log has it


@pytest.mark.parametrize(
    "limits, raw, ok",
    [
        ({"max_line": 4}, b"/abc\n/efg\n\n", True),
        ({"max_line": 4}, b"/abcd\n/e\n\n", False),
        ({"max_line": 4}, b"/abc\n/efgh", False),  # detected before the newline arrives
        ({"max_controls": 2}, b"/d\n/c1\n/c2\n\n", True),
        ({"max_controls": 2}, b"/d\n/c1\n/c2\n/c3\n\n", False),
        ({"max_bytes": 8}, b"/d\n/c\n\n", True),  # 7 bytes
        ({"max_bytes": 7}, b"/d\n/c\n\n", True),
        ({"max_bytes": 6}, b"/d\n/c\n\n", False),  # the final newline is byte 7
    ],
)
def test_limits_are_exact(limits: dict[str, int], raw: bytes, ok: bool) -> None:
    result = outcome(RequestReader(**limits), [raw])
    assert result[0] == ("ok" if ok else "error"), result


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RequestReader(max_line=0)


def test_a_long_line_is_refused_without_waiting_for_its_end() -> None:
    reader = RequestReader(max_line=100)
    assert reader.feed(b"/" + b"x" * 99) is None
    with pytest.raises(ProtocolError, match="longer than 100"):
        reader.feed(b"x")


def test_errors_are_sticky() -> None:
    reader = RequestReader()
    with pytest.raises(ProtocolError) as first:
        reader.feed(b"/d\0\n")
    with pytest.raises(ProtocolError) as again:
        reader.feed(b"/c\n\n")
    assert again.value is first.value
    with pytest.raises(ProtocolError):
        reader.finish()


def test_bytes_after_the_request_are_kept_as_remainder() -> None:
    reader = RequestReader()
    assert reader.feed(b"/d\n/c\n\n/d2\n") == Request("/d", ("/c",))
    assert reader.feed(b"/c2\n\n") == Request("/d", ("/c",))
    assert reader.remainder == b"/d2\n/c2\n\n"
    assert parse_request(reader.remainder) == Request("/d2", ("/c2",))
    assert reader.finish() == Request("/d", ("/c",))


def test_finish_reports_an_incomplete_request() -> None:
    reader = RequestReader()
    reader.feed(b"/d\n/c\n")
    with pytest.raises(ProtocolError) as info:
        reader.finish()
    assert info.value.reply.code == 432
    assert "after 6 bytes" in str(info.value)


# --- replies -----------------------------------------------------------------------------

REPLIES = [
    pytest.param(Reply(200, "Ok"), b"200 Ok\n", id="accept"),
    pytest.param(Reply(50, "Ok"), b"050 Ok\n", id="0xx-skip-later-filters"),
    pytest.param(Reply(0, "x"), b"000 x\n", id="000"),
    pytest.param(Reply(432, "4.3.0 later"), b"432 4.3.0 later\n", id="defer"),
    pytest.param(
        Reply(550, ["5.7.1 Virus found: EICAR", "5.7.1 Rejected by avtool"]),
        b"550-5.7.1 Virus found: EICAR\n550 5.7.1 Rejected by avtool\n",
        id="multi-line",
    ),
    pytest.param(Reply(550, []), b"550 \n", id="no-text"),
    pytest.param(Reply(550, [""]), b"550 \n", id="empty-text"),
    pytest.param(Reply(550, "a\r\n250 Ok"), b"550 a  250 Ok\n", id="crlf-injection"),
    pytest.param(Reply(550, "a\n\n"), b"550 a  \n", id="lf-injection"),
    pytest.param(Reply(550, "a\0b\x7fc\td"), b"550 a b c d\n", id="nul-del-tab"),
    pytest.param(Reply(550, "virus: Ünïcode"), b"550 virus: ?n?code\n", id="non-ascii"),
    pytest.param(Reply(550, ["x\n550 fake", "y"]), b"550-x 550 fake\n550 y\n", id="fake-last-line"),
]


@pytest.mark.parametrize("reply, expected", REPLIES)
def test_format_reply(reply: Reply, expected: bytes) -> None:
    assert format_reply(reply) == expected


def test_reply_lines_are_cut_to_the_smtp_limit() -> None:
    out = format_reply(Reply(550, ["y" * 2000, "z" * 2000]))
    lines = out.split(b"\n")
    assert lines[-1] == b""
    assert [len(line) for line in lines[:-1]] == [MAX_REPLY_LINE, MAX_REPLY_LINE]
    assert lines[0].startswith(b"550-y") and lines[1].startswith(b"550 z")


@pytest.mark.parametrize("code", [-1, 600, 999, 1000, True, False, "250", 2.5, None])
def test_reply_codes_are_checked(code: object) -> None:
    with pytest.raises(ValueError, match="000-599"):
        Reply(code, "x")  # type: ignore[arg-type]


# --- properties --------------------------------------------------------------------------

# Bytes that hit every branch: path characters, the newline, NUL, CR, 8-bit and cut UTF-8.
stream_bytes = st.lists(
    st.sampled_from([b"/", b"a", b"\n", b"\n\n", b"\0", b"\r", b"\xc3", b"\xa9", b"\xff", b" "]),
    max_size=60,
).map(b"".join) | st.binary(max_size=200)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    raw = draw(stream_bytes)
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    bounds = [0, *cuts, len(raw)]
    return raw, [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


limits = st.fixed_dictionaries(
    {},
    optional={
        "max_line": st.integers(1, 12),
        "max_controls": st.integers(1, 4),
        "max_bytes": st.integers(1, 40),
    },
)


@settings(max_examples=1500)
@given(chunked(), limits)
def test_any_chunking_gives_the_same_outcome(
    data: tuple[bytes, list[bytes]], lim: dict[str, int]
) -> None:
    raw, chunks = data
    # One chunk takes the fast path for a whole request (RequestReader._whole), one byte at a
    # time the general parser: the same requests and the same errors.
    whole = outcome(RequestReader(**lim), [raw])
    assert outcome(RequestReader(**lim), chunks) == whole
    assert outcome(RequestReader(**lim), [raw[i : i + 1] for i in range(len(raw))]) == whole


@settings(max_examples=1000)
@given(st.binary(max_size=300), limits)
def test_only_protocol_errors_escape(raw: bytes, lim: dict[str, int]) -> None:
    reader = RequestReader(**lim)
    try:
        request = reader.feed(raw)
        reader.finish()
    except ProtocolError as e:
        assert e.reply.code in (432, 500)
        return
    assert request is not None
    assert request.control_paths
    for path in (request.data_path, *request.control_paths):
        assert path and not re.search(r"[\x00-\x1f\x7f]", path)


# Paths: no surrogates (not UTF-8 encodable), no newline, NUL or other C0 control character.
path_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xD7FF, blacklist_characters="\x7f"),
    min_size=1,
    max_size=30,
)


@given(path_text, st.lists(path_text, min_size=1, max_size=5))
def test_round_trip(data: str, controls: list[str]) -> None:
    raw = "".join(p + "\n" for p in (data, *controls)).encode() + b"\n"
    assert parse_request(raw) == Request(data, tuple(controls))


@given(st.integers(0, 599), st.one_of(st.text(), st.lists(st.text(), max_size=5)))
def test_reply_framing_cannot_be_broken(code: int, text: str | list[str]) -> None:
    out = format_reply(Reply(code, text))
    lines = out.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    n = 1 if isinstance(text, str) else max(1, len(text))
    assert len(lines) == n
    prefix = f"{code:03d}".encode()
    for i, line in enumerate(lines):
        assert len(line) <= MAX_REPLY_LINE
        assert re.fullmatch(rb"\d{3}[- ][\x20-\x7e]*", line), line
        assert line[:3] == prefix
        assert line[3:4] == (b" " if i == n - 1 else b"-")
