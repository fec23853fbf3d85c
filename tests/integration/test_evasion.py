"""The MIME evasion corpus (tests/support/evasion.py) through a real daemon and a real clamd.

clamd runs with the harness's options (tests/support/clamd_harness.py: ScanMail and ScanArchive yes,
the rest clamd's defaults, as in Debian's clamd.conf) and the shipped test signatures. Every
message carries EICAR behind one trick and must be refused with 550; the same message with a
harmless payload must pass, so a pass cannot come from something else in the message.

Cases clamd itself misses are strict xfails with the reason, so that they are listed here and
fail the day clamd starts catching them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from avtool.engine import Clean, Engine
from tests.conftest import MakeConfig
from tests.support import evasion
from tests.support.serve import Daemon, config_for, start_daemon
from tests.unit import test_unscannable as unscannable_cases

pytestmark = pytest.mark.clamd

# Found with `clamscan --debug` on the corpus (ClamAV 1.4.6): for a body that is not MIME, or
# a text/plain part with no Content-Transfer-Encoding, libclamav's mbox parser logs "Not a
# mime encoded message" / "Saving text part to scan" and scans the text as it is; it decodes
# yEnc only where Content-Transfer-Encoding says x-yencode (the yenc_part case is caught).
# uuencode in the same places is found. Mail clients do not decode yEnc in a text body either,
# so the recipient gets text, not the file; a yEnc-aware reader would.
# message/partial (RFC 2046 5.2.2): libclamav logs "Partial message received from MUA/MTA -
# message cannot be scanned" and answers clean, even for one fragment (number=1; total=1)
# holding a whole message. clamd's ScanPartialMessages (default no, as in Debian's clamd.conf)
# turns on "RFC1341 handling", but the case was still clean with it in a trial on ClamAV
# 1.4.6. Fragments spread over several messages can be caught by no per-message filter, so
# avtool makes a fragment "unchecked" and policy.unchecked decides (the last test here).
CLAMD_MISSES = {
    "yenc_body": "clamd decodes yEnc only with Content-Transfer-Encoding: x-yencode",
    "yenc_text_part": "clamd decodes yEnc only with Content-Transfer-Encoding: x-yencode",
    "message_partial": "clamd answers clean for message/partial: 'cannot be scanned'",
}


@pytest.fixture(scope="module")
def daemon(clamd_server: Any) -> Iterator[Daemon]:
    d = start_daemon(config_for(str(clamd_server.unix_socket)))
    yield d
    assert d.stop() == 0


def cases() -> list[Any]:
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(reason=CLAMD_MISSES[name], strict=True)]
            if name in CLAMD_MISSES
            else [],
        )
        for name in evasion.CASES
    ]


@pytest.mark.parametrize("name", cases())
def test_eicar_behind_the_trick_is_caught(daemon: Daemon, name: str) -> None:
    build = evasion.CASES[name]
    message = build(evasion.EICAR)
    evasion.check_hidden(message, evasion.EICAR)  # caught means decoded, not seen in the clear
    reply = daemon.filter(*daemon.spool.message(message))
    assert reply.startswith("550 5.7.1 Virus found: Eicar-Test-Signature"), reply


@pytest.mark.parametrize("name", list(evasion.CASES))
def test_the_same_trick_with_a_harmless_payload_passes(daemon: Daemon, name: str) -> None:
    message = evasion.CASES[name](evasion.HARMLESS)
    assert daemon.filter(*daemon.spool.message(message)) == "200 Ok\n"


def test_the_corpus_covers_the_issue_list() -> None:
    """The tricks named in the issue, each present (a rename must not drop one silently)."""
    wanted = {
        "cte_odd_case",
        "no_closing_boundary",
        "nested_rfc822",
        "base64_stray_whitespace",
        "base64_one_long_line",
        "long_header_lines",
        "uuencoded_body",
        "yenc_body",
        "zip_in_zip",
        "misleading_image",
        "misleading_zip_as_pdf",
    }
    assert wanted <= set(evasion.CASES)
    nested = evasion.nested_rfc822(evasion.EICAR)
    assert nested.count(b"Content-Type: message/rfc822") == 5
    assert max(len(line) for line in evasion.base64_one_long_line(evasion.EICAR).split(b"\n")) > (
        300_000
    )


def test_yenc_is_decodable_as_built() -> None:
    """The yEnc encoder is by hand: decode it back, so that a miss is clamd's, not ours."""
    encoded = evasion.yenc(evasion.EICAR + bytes(range(256)))
    lines = encoded.split(b"\n")
    assert lines[0].startswith(b"=ybegin ") and lines[-2].startswith(b"=yend ")
    out, escape = bytearray(), False
    for byte in b"".join(lines[1:-2]):
        if escape:
            out.append((byte - 64 - 42) % 256)
            escape = False
        elif byte == 0x3D:
            escape = True
        else:
            out.append((byte - 42) % 256)
    assert bytes(out) == evasion.EICAR + bytes(range(256))


def test_a_fragment_counts_as_unchecked(clamd_server: Any) -> None:
    """clamd answers clean for message/partial without looking: avtool calls it unchecked, so
    policy.unchecked decides (here reject), whatever the fragment holds."""
    conf = config_for(str(clamd_server.unix_socket), '\n[policy]\nunchecked = "reject"\n')
    d = start_daemon(conf)
    try:
        for payload in (evasion.EICAR, evasion.HARMLESS):
            reply = d.filter(*d.spool.message(evasion.message_partial(payload)))
            assert reply.startswith("550 5.7.1 Message could not be scanned: message/partial")
        assert d.filter(*d.spool.message(evasion.CASES["cte_odd_case"](evasion.HARMLESS))) == (
            "200 Ok\n"
        )
    finally:
        assert d.stop() == 0
    assert "verdict=unchecked: message/partial" in d.log()


@pytest.mark.parametrize("name", list(evasion.FRAGMENTS))
def test_clamd_answers_ok_for_every_fragment(engine_config: MakeConfig, name: str) -> None:
    """The attack: each variant (tests/support/evasion.py FRAGMENTS) hides EICAR from clamd, which
    answers OK (the day it does not, this fails and the case can go)."""
    engine = Engine.from_config(engine_config())
    with tempfile.TemporaryFile() as f:
        f.write(evasion.FRAGMENTS[name](evasion.EICAR))
        f.flush()
        assert isinstance(engine.scan(f.fileno(), deadline=time.monotonic() + 20), Clean)


def test_every_fragment_counts_as_unchecked(clamd_server: Any) -> None:
    """...and the filter calls each one unchecked, whatever it holds (policy.unchecked =
    reject here), while a forwarded message, a bounce and a message/* part pass."""
    conf = config_for(str(clamd_server.unix_socket), '\n[policy]\nunchecked = "reject"\n')
    d = start_daemon(conf)
    try:
        for name, build in evasion.FRAGMENTS.items():
            for payload in (evasion.EICAR, evasion.HARMLESS):
                reply = d.filter(*d.spool.message(build(payload)))
                assert reply.startswith("550 5.7.1 Message could not be scanned: message/"), name
        for name, message in unscannable_cases.NOT_FRAGMENTS.items():
            assert d.filter(*d.spool.message(message)) == "200 Ok\n", name
    finally:
        assert d.stop() == 0
    assert "verdict=unchecked: message/partial: a fragment" in d.log()
    assert "verdict=unchecked: message/x-anything: clamd does not scan this type" in d.log()
