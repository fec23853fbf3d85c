"""clamd replies -> verdicts, as tables of byte strings (replies.py is pure)."""

from __future__ import annotations

import pytest

from avtool.engine import Clean, Failed, Infected, Unchecked
from avtool.engine.replies import (
    BackendFailure,
    parse_version,
    reply_text,
    scan_verdict,
)

B = "/run/clamd.sock"

VERDICTS = [
    (b"fd[12]: OK\0", None, Clean(B)),
    (b"stream: OK\0", None, Clean(B)),
    (b"/var/spool/D1: OK\0", "/var/spool/D1", Clean(B)),
    (b"/a: b/D1: OK\0", "/a: b/D1", Clean(B)),  # ": " inside the path
    (
        b"stream: Eicar-Test-Signature.Body.UNOFFICIAL FOUND\0",
        None,
        Infected(("Eicar-Test-Signature.Body.UNOFFICIAL",), B),
    ),
    (b"fd[9]: Win.Test.EICAR_HDB-1 FOUND\0", None, Infected(("Win.Test.EICAR_HDB-1",), B)),
    (b"/x: y: Win.Test.EICAR_HDB-1 FOUND\0", "/x: y", Infected(("Win.Test.EICAR_HDB-1",), B)),
    # ALLMATCH-style: several names, each its own line
    (
        b"stream: A.B FOUND\nstream: Heuristics.Encrypted.Zip FOUND\0",
        None,
        Infected(("A.B",), B),
    ),
    (
        b"stream: Heuristics.Encrypted.Zip FOUND\0",
        None,
        Unchecked("encrypted archive: Heuristics.Encrypted.Zip", B),
    ),
    (
        b"fd[3]: Heuristics.Encrypted.PDF FOUND\0",
        None,
        Unchecked("encrypted archive: Heuristics.Encrypted.PDF", B),
    ),
    (
        b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0",
        None,
        Unchecked("clamd limits exceeded: Heuristics.Limits.Exceeded.MaxFileSize", B),
    ),
    # other heuristics are detections; policy.heuristics decides what to do with them
    (b"fd[3]: Heuristics.Phishing.Email FOUND\0", None, Infected(("Heuristics.Phishing.Email",))),
    (
        b"INSTREAM size limit exceeded. ERROR\0",
        None,
        Unchecked("too large for clamd StreamMaxLength", B),
    ),
    # ERROR about the file: clamd's answer, not a backend failure
    (
        b"/srv/D1: Access denied. ERROR\0",
        "/srv/D1",
        Failed("clamd error: /srv/D1: Access denied.", B),
    ),
    (
        b"/nonexist: x: File path check failure: No such file or directory. ERROR\0",
        "/nonexist: x",
        Failed("clamd error: /nonexist: x: File path check failure: No such file or directory.", B),
    ),
    (
        b"fd[4]: Can't allocate memory ERROR\0",
        None,
        Failed("clamd error: fd[4]: Can't allocate memory", B),
    ),
]


@pytest.mark.parametrize(("raw", "path", "expected"), VERDICTS)
def test_scan_reply_verdicts(raw: bytes, path: str | None, expected: object) -> None:
    if isinstance(expected, Infected) and not expected.backend:
        expected = Infected(expected.names, B)
    assert scan_verdict(raw, backend=B, path=path) == expected


FAILURES = [
    (b"", "without a reply"),
    (b"fd[5]: Eicar-Test-Sig", "mid-reply"),  # no \0 terminator: cut off
    (b"stream: OK", "mid-reply"),
    (b"HELLO, I AM NOT CLAMD\0", "unexpected reply"),
    (b"\0", "empty reply"),
    (b"OK\0", "unexpected reply"),
    (b"UNKNOWN COMMAND\0", "unexpected reply"),
    (b"stream: two words FOUND\0", "unexpected reply"),
    (b": FOUND\0", "unexpected reply"),
    (b"PROTOCOL ERROR: ancillary data sent without FILDES. ERROR\0", "clamd error: PROTOCOL"),
    (b"No file descriptor received. ERROR\0", "clamd error: No file descriptor"),
    (b"COMMAND READ TIMED OUT\0", "unexpected reply"),
    (b"\xff\xfe\0", "unexpected reply"),
]


@pytest.mark.parametrize(("raw", "reason"), FAILURES)
def test_unusable_replies_are_backend_failures(raw: bytes, reason: str) -> None:
    with pytest.raises(BackendFailure) as info:
        scan_verdict(raw, backend=B)
    assert reason in info.value.reason
    assert not info.value.timeout


def test_an_error_not_about_the_scanned_path_is_a_backend_failure() -> None:
    # SCAN: an ERROR that does not echo a path is about the command, not the file.
    with pytest.raises(BackendFailure):
        scan_verdict(b"Not enough threads for multiscan. ERROR\0", backend=B, path="/srv/D1")


@pytest.mark.parametrize(
    ("raw", "product", "engine", "db", "date"),
    [
        (b"ClamAV 1.4.6\0", "ClamAV 1.4.6", "1.4.6", None, None),
        (
            b"ClamAV 1.4.6/27000/Tue Nov 24 09:23:41 2025\0",
            "ClamAV 1.4.6",
            "1.4.6",
            27000,
            "Tue Nov 24 09:23:41 2025",
        ),
        (b"ClamAV 0.103.12/26000/\0", "ClamAV 0.103.12", "0.103.12", 26000, None),
    ],
)
def test_version(raw: bytes, product: str, engine: str, db: int | None, date: str | None) -> None:
    v = parse_version(raw)
    assert (v.product, v.engine, v.db_version, v.db_date) == (product, engine, db, date)


@pytest.mark.parametrize("raw", [b"PONG\0", b"", b"ClamAV 1.4.6"])
def test_version_garbage(raw: bytes) -> None:
    with pytest.raises(BackendFailure):
        parse_version(raw)


def test_reply_text_strips_terminator_and_space() -> None:
    assert reply_text(b"PONG\0") == "PONG"
    assert reply_text(b"POOLS: 1\n\nEND\0") == "POOLS: 1\n\nEND"
