"""Header edits on the data file: tables of messages, file metadata, failures, properties."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avtool.courier import message
from avtool.courier.message import MessageError, field_line, has_fields, rewrite_headers

OURS = ["X-Virus-Status", "X-Virus-Scanned"]
CLEAN = [("X-Virus-Scanned", "avtool 0.1 with ClamAV"), ("X-Virus-Status", "Clean")]
ADDED = b"X-Virus-Scanned: avtool 0.1 with ClamAV\nX-Virus-Status: Clean\n"
ADDED_CRLF = ADDED.replace(b"\n", b"\r\n")

CASES = [
    pytest.param(
        b"Received: from x\nSubject: hi\n\nbody\n",
        CLEAN,
        b"" + ADDED + b"Received: from x\nSubject: hi\n\nbody\n",
        id="add-lf",
    ),
    pytest.param(
        b"Received: from x\r\nSubject: hi\r\n\r\nbody\r\n",
        CLEAN,
        ADDED_CRLF + b"Received: from x\r\nSubject: hi\r\n\r\nbody\r\n",
        id="add-crlf",
    ),
    pytest.param(
        b"X-Virus-Status: Clean\nx-virus-scanned : forged\nSubject: a\n\n"
        b"X-Virus-Status: in the body\n",
        [],
        b"Old-X-Virus-Status: Clean\nOld-x-virus-scanned : forged\nSubject: a\n\n"
        b"X-Virus-Status: in the body\n",
        id="rename-case-insensitive-header-only",
    ),
    pytest.param(
        b"X-Virus-Status: Clean\r\nSubject: a\r\n\r\nX-Virus-Status: body\r\n",
        CLEAN[1:],
        b"X-Virus-Status: Clean\r\nOld-X-Virus-Status: Clean\r\nSubject: a\r\n\r\n"
        b"X-Virus-Status: body\r\n",
        id="add-and-rename-crlf",
    ),
    pytest.param(
        b"X-Virus-Scanned: a\n b\n\tX-Virus-Status: c\nSubject: x\n\nb\n",
        [],
        b"Old-X-Virus-Scanned: a\n b\n\tX-Virus-Status: c\nSubject: x\n\nb\n",
        id="folded-continuations-untouched",
    ),
    pytest.param(
        b"X-Virus-Status-Extra: a\nX-Virus-StatusX: b\nX-Virus: c\nXX-Virus-Status: d\n\n",
        [],
        b"X-Virus-Status-Extra: a\nX-Virus-StatusX: b\nX-Virus: c\nXX-Virus-Status: d\n\n",
        id="similar-names-untouched",
    ),
    pytest.param(
        b"Subject: a\nX-Virus-Status: z",
        CLEAN[1:],
        b"X-Virus-Status: Clean\nSubject: a\nOld-X-Virus-Status: z",
        id="no-blank-line-no-final-newline",
    ),
    pytest.param(b"", CLEAN, ADDED, id="empty-file"),
    pytest.param(
        b"\nX-Virus-Status: body only\n",
        CLEAN[1:],
        b"X-Virus-Status: Clean\n\nX-Virus-Status: body only\n",
        id="body-only",
    ),
    pytest.param(
        b"Subject: \xe9\xff\nX-Virus-Status: \xff\x00\n\n\x00\xff\xfe body\r\n\r\n",
        [],
        b"Subject: \xe9\xff\nOld-X-Virus-Status: \xff\x00\n\n\x00\xff\xfe body\r\n\r\n",
        id="8bit-and-nul-bytes-kept",
    ),
    pytest.param(
        b"From sender Mon Jan  1 00:00:00 2024\nX-Virus-Status: x\n\n",
        [],
        b"From sender Mon Jan  1 00:00:00 2024\nOld-X-Virus-Status: x\n\n",
        id="line-without-field-name",
    ),
    pytest.param(
        b"Subject: a\n\nbody\n",
        [("X-Virus-Status", "Infected\r\nBcc: victim@example.test\n\nnew body")],
        b"X-Virus-Status: Infected Bcc: victim@example.test new body\nSubject: a\n\nbody\n",
        id="value-cannot-inject-fields",
    ),
]


def rewrite(tmp_path: Path, content: bytes, add: list[tuple[str, str]], **kw: str) -> bytes:
    path = tmp_path / "D1442023"
    path.write_bytes(content)
    rewrite_headers(str(path), add, OURS, **kw)
    return path.read_bytes()


@pytest.mark.parametrize("content, add, expected", CASES)
def test_rewrite(
    tmp_path: Path, content: bytes, add: list[tuple[str, str]], expected: bytes
) -> None:
    assert rewrite(tmp_path, content, add) == expected


def test_another_prefix(tmp_path: Path) -> None:
    out = rewrite(tmp_path, b"X-Virus-Status: x\n\n", [], prefix="X-Old-")
    assert out == b"X-Old-X-Virus-Status: x\n\n"
    with pytest.raises(ValueError):
        rewrite(tmp_path, b"\n", [], prefix="Old:")


def test_a_field_in_a_long_line_is_not_a_field(tmp_path: Path) -> None:
    # A line longer than the 64 KiB read size comes in pieces; only the first starts a field.
    long = b"Subject: " + b"a" * (message.READ_LINE - 9) + b"X-Virus-Status: no\n"
    content = long + b"X-Virus-Status: yes\n\nbody\n"
    assert rewrite(tmp_path, content, []) == long + b"Old-X-Virus-Status: yes\n\nbody\n"


def test_a_long_line_cut_just_before_its_newline_does_not_end_the_header(tmp_path: Path) -> None:
    long = b"Subject: " + b"a" * (message.READ_LINE - 9) + b"\n"  # the "\n" is a piece alone
    content = long + b"X-Virus-Status: yes\n\nbody\n"
    assert rewrite(tmp_path, content, []) == long + b"Old-X-Virus-Status: yes\n\nbody\n"


def test_a_big_body_is_copied_exactly(tmp_path: Path) -> None:
    body = os.urandom(5 << 20)
    out = rewrite(tmp_path, b"X-Virus-Status: x\n\n" + body, CLEAN)
    assert out == ADDED + b"Old-X-Virus-Status: x\n\n" + body


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("X-A", "b", b"X-A: b\n"),
        ("X-A", "", b"X-A:\n"),
        ("X-A", "  spaced \t out  ", b"X-A: spaced out\n"),
        ("X-A", "caf\u00e9", "X-A: caf\u00e9\n".encode()),
        ("X-A", "a\u2028b\x85c", b"X-A: a b c\n"),  # unicode line breaks are folded away too
    ],
)
def test_field_line(name: str, value: str, expected: bytes) -> None:
    assert field_line(name, value) == expected


def test_long_values_are_folded(tmp_path: Path) -> None:
    names = " ".join(f"Win.Trojan.Agent-{i}" for i in range(20))
    line = field_line("X-Virus-Status", f"Infected ({names})", b"\r\n")
    lines = line.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(x) <= message.FOLD_AT for x in lines[:-1])
    assert all(x.startswith(b" ") for x in lines[1:-1])
    assert (
        b" ".join(x.strip() for x in lines).strip()
        == f"X-Virus-Status: Infected ({names})".encode()
    )
    word = field_line("X-A", "y" * 5000)
    assert len(word) == len("X-A: ") + message.MAX_WORD + 1  # RFC 5322: at most 998


@pytest.mark.parametrize("name", ["", "Bad Name", "A:b", "caf\u00e9", "X\n", "X-A\r\nBcc"])
def test_bad_names_are_refused_before_any_change(tmp_path: Path, name: str) -> None:
    path = tmp_path / "D1"
    path.write_bytes(b"Subject: a\n\n")
    with pytest.raises(ValueError):
        rewrite_headers(str(path), [(name, "v")], [])
    with pytest.raises(ValueError):
        rewrite_headers(str(path), [], [name])
    assert path.read_bytes() == b"Subject: a\n\n"
    assert os.listdir(tmp_path) == ["D1"]


def test_metadata_is_kept_and_the_file_replaced(tmp_path: Path) -> None:
    path = tmp_path / "D1"
    path.write_bytes(b"Subject: a\n\n")
    os.chmod(path, 0o660)
    if os.geteuid() == 0:
        os.chown(path, 1234, 5678)
    before = os.stat(path)
    rewrite_headers(str(path), CLEAN, OURS)
    after = os.stat(path)
    assert stat.S_IMODE(after.st_mode) == 0o660
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # a new file renamed over the old one
    assert os.listdir(tmp_path) == ["D1"]  # no temporary file left


def test_a_reader_of_the_old_file_sees_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "D1"
    path.write_bytes(b"Subject: a\n\nbody\n")
    with open(path, "rb") as old:
        rewrite_headers(str(path), CLEAN, OURS)
        assert old.read() == b"Subject: a\n\nbody\n"


def test_nothing_to_do_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "D1"
    path.write_bytes(b"X-Virus-Status: x\n\n")
    ino = os.stat(path).st_ino
    rewrite_headers(str(path), [], [])
    assert os.stat(path).st_ino == ino


def test_a_failure_leaves_the_original_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "D1"
    path.write_bytes(b"X-Virus-Status: x\n\nbody\n")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", broken)
    with pytest.raises(OSError, match="No space"):
        rewrite_headers(str(path), CLEAN, OURS)
    assert path.read_bytes() == b"X-Virus-Status: x\n\nbody\n"
    assert os.listdir(tmp_path) == ["D1"]


def test_symlinks_and_special_files_are_not_rewritten(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_bytes(b"Subject: a\n\n")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError):  # ELOOP from O_NOFOLLOW
        rewrite_headers(str(tmp_path / "link"), CLEAN, OURS)
    with pytest.raises(OSError):
        has_fields(str(tmp_path / "link"), OURS)
    assert target.read_bytes() == b"Subject: a\n\n"
    os.mkfifo(tmp_path / "fifo")  # no writer: must not block
    with pytest.raises(MessageError) as info:
        rewrite_headers(str(tmp_path / "fifo"), CLEAN, OURS)
    assert "not a regular file" in str(info.value)
    with pytest.raises(FileNotFoundError):
        rewrite_headers(str(tmp_path / "missing"), CLEAN, OURS)


@pytest.mark.parametrize(
    "content, found",
    [
        (b"Subject: a\nx-virus-STATUS: b\n\n", True),
        (b"X-Virus-Scanned : b\n\n", True),
        (b"Subject: a\n X-Virus-Status: folded\n\n", False),
        (b"Subject: a\n\nX-Virus-Status: body\n", False),
        (b"X-Virus-Status-Not: a\n\n", False),
        (b"", False),
    ],
)
def test_has_fields(tmp_path: Path, content: bytes, found: bool) -> None:
    path = tmp_path / "D1"
    path.write_bytes(content)
    assert has_fields(str(path), OURS) is found
    assert has_fields(str(path), []) is False


# --- property: a different, in-memory reading of the same rules gives the same bytes -------


def oracle(content: bytes, renames: set[bytes]) -> bytes:
    """The whole message in memory; fields split with a regex rather than a line scanner."""
    if content.startswith(b"\n"):
        return content  # no header at all
    head, sep, body = content.partition(b"\n\n")
    lines = (head + sep[:1]).splitlines(keepends=True)
    out = []
    for line in lines:
        m = re.match(rb"([^ \t:][^:]*?)[ \t]*:", line)
        if m and m[1].lower() in renames:
            line = b"Old-" + line
        out.append(line)
    return b"".join(out) + sep[1:] + body


header_line = st.one_of(
    st.sampled_from(
        [
            b"X-Virus-Status: a",
            b"x-virus-scanned:b",
            b"X-Virus-Status : c",
            b" folded",
            b"\tX-Virus-Status: f",
            b"Subject: s",
            b"nocolon",
            b"X-Virus-Status-Not: n",
        ]
    ),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b and b != b""),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(header_line, max_size=8), st.binary(max_size=60), st.booleans())
def test_same_as_an_in_memory_oracle(
    tmp_path: Path, lines: list[bytes], body: bytes, blank: bool
) -> None:
    content = b"".join(line + b"\n" for line in lines) + (b"\n" + body if blank else b"")
    out = rewrite(tmp_path, content, CLEAN[1:])
    assert out == b"X-Virus-Status: Clean\n" + oracle(
        content, {b"x-virus-status", b"x-virus-scanned"}
    )


_LINES = st.sampled_from(
    [b"Subject: x\n", b"X-Virus-Status: Clean\n", b"x-virus-STATUS : y\n", b" folded\n",
     b"\tX-Virus-Status: in a fold\n", b"\n", b"\r\n", b"Body X-Virus-Status: z\n",
     b"X-Other: X-Virus-Status\n", b"A" * 70 + b"\n", b"no colon\n"]
)  # fmt: skip


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINES, max_size=40), pad=st.integers(0, 70_000))
def test_has_fields_fast_answer_agrees_with_the_full_read(
    tmp_path: Path, lines: list[bytes], pad: int
) -> None:
    """The quick look at the first read only ever says "no" when the line by line read does."""
    content = b"".join(lines[:20]) + b"Y" * pad + b"\n" + b"".join(lines[20:])
    path = tmp_path / "msg"
    path.write_bytes(content)
    with open(path, "rb") as src:
        wanted = message._names(["X-Virus-Status"])
        full = any(name in wanted for _, name in message._header(src))
    assert has_fields(str(path), ["X-Virus-Status"]) is full
    fd = os.open(path, os.O_RDONLY)
    try:
        quick = message.quick_header(os.pread(fd, message.READ_LINE, 0), len(content))  # as judge
    finally:
        os.close(fd)
    assert has_fields(str(path), ["X-Virus-Status"], quick=quick) is full


def test_every_x_virus_field_is_renamed(tmp_path: Path) -> None:
    """The README promises every incoming X-Virus-* field renamed, not only ours by name."""
    content = (
        b"X-Virus-Status: Clean\nx-virus-FLAG: NO\nX-Virus-Scanner-Result : clean\n"
        b"X-Virus-: y\nX-Virusx: kept\nOld-X-Virus-Status: kept\nX-Spam: X-Virus-Status: z\n"
        b" X-Virus-Status: a fold\n\nX-Virus-Status: in the body\n"
    )
    path = tmp_path / "D1"
    path.write_bytes(content)
    assert has_fields(str(path), ["X-Virus-*"])
    quick = message.quick_header(content, len(content))
    assert has_fields(str(path), ["X-Virus-*"], quick=quick)
    rewrite_headers(str(path), CLEAN[1:], ["X-Virus-*"])
    assert path.read_bytes() == (
        b"X-Virus-Status: Clean\n"
        b"Old-X-Virus-Status: Clean\nOld-x-virus-FLAG: NO\nOld-X-Virus-Scanner-Result : clean\n"
        b"Old-X-Virus-: y\nX-Virusx: kept\nOld-X-Virus-Status: kept\nX-Spam: X-Virus-Status: z\n"
        b" X-Virus-Status: a fold\n\nX-Virus-Status: in the body\n"
    )
    path.write_bytes(b"X-Virusx: a\nSubject: X-Virus-Flag\n\nX-Virus-Flag: b\n")
    assert not has_fields(str(path), ["X-Virus-*"])
    with pytest.raises(ValueError, match="not a header field name"):
        has_fields(str(path), ["X Virus*"])
