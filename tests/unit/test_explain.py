"""--explain's part finding, with a stand-in for clamd: bytes holding EICAR or clam.exe are
infected (the real clamd is used in tests/integration/test_scan.py)."""

from __future__ import annotations

import pytest

from avtool.engine import Clean, Infected, Verdict
from avtool.scan.explain import Part, explain, uuencoded
from tests.support.mailboxes import (
    EICAR,
    TESTFILES,
    clean_zip,
    nested,
    plain,
    quoted_printable,
    with_attachment,
)
from tests.support.mailboxes import uuencoded as uu_mail

CLAM = (TESTFILES / "clam.exe").read_bytes() if TESTFILES.is_dir() else b"clam.exe stand-in"


def fake_scan(data: bytes) -> Verdict:
    if EICAR in data:
        return Infected(("Eicar",))
    if CLAM in data:
        return Infected(("ClamAV-Test-File",))
    return Clean()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            with_attachment("b64", "eicar.com", EICAR),
            [Part("2", "application/octet-stream", "eicar.com", ("Eicar",))],
        ),
        (quoted_printable("qp"), [Part("2", "text/plain", None, ("Eicar",))]),
        (nested("fw"), [Part("2.2", "application/octet-stream", "eicar.com", ("Eicar",))]),
        (plain("inline", EICAR + b"\n"), [Part("1", "text/plain", None, ("Eicar",))]),
        (plain("clean"), []),
        (clean_zip("zip"), []),
    ],
)
def test_parts(data: bytes, expected: list[Part]) -> None:
    assert list(explain(data, fake_scan)) == expected


@pytest.mark.skipif(not TESTFILES.is_dir(), reason="needs clamav-testfiles")
def test_uuencoded_block_inside_a_text_part() -> None:
    [part] = explain(uu_mail("uu"), fake_scan)
    assert part == Part("1", "text/plain", "clam.exe", ("ClamAV-Test-File",), "uuencoded")


def test_uudecode_round_trip_and_trailing_space_loss() -> None:
    import binascii

    data = bytes(range(256)) * 3
    lines = [binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45)]
    text = b"text\nbegin 600 a.bin\n" + b"".join(lines) + b"`\nend\n"
    assert list(uuencoded(text)) == [("a.bin", data)]
    # Some encoders drop trailing spaces; the length byte still says how much to decode.
    stripped = b"text\nbegin 600 b.bin\n" + b"".join(ln.rstrip(b" \n") + b"\n" for ln in lines)
    assert list(uuencoded(stripped + b"end\n")) == [("b.bin", data)]


def test_deeply_nested_multiparts_are_numbered_like_imap() -> None:
    inner = (
        b'Content-Type: multipart/alternative; boundary="b2"\n\n'
        b"--b2\nContent-Type: text/plain\n\nplain\n"
        b"--b2\nContent-Type: text/html\n\n<p>" + EICAR + b"</p>\n--b2--\n"
    )
    data = (
        b'From: a@b\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n\n'
        b"--b1\n" + inner + b"\n--b1\nContent-Type: text/plain\n\nmore\n--b1--\n"
    )
    assert explain(data, fake_scan) == (Part("1.2", "text/html", None, ("Eicar",)),)


def test_a_long_file_name_is_shown_fast() -> None:
    """compat32's parameter parser took seconds on 60 KB of ";" in a Content-Disposition."""
    import time

    noise = b";" * 60_000
    data = (
        with_attachment("b64", "eicar.com", EICAR)
        .replace(b'filename="eicar.com"', b'filename="eicar.com"' + noise)
        .replace(b'name="eicar.com"', b'name="eicar.com"' + noise)
    )
    assert noise in data
    started = time.monotonic()
    [part] = explain(data, fake_scan)
    assert time.monotonic() - started < 0.5
    assert part.filename == "eicar.com"
