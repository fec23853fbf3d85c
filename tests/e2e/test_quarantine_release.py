"""Issue 17 end to end: held by the filter in a real Courier, released through Courier's own
sendmail, rescanned by the installer's clamd.

A false positive is made for the test: a signature for a harmless text, added to the
installer's clamd (beside share/testsigs in /var/lib/clamav) and reloaded; taking it away again
and reloading is "today's signatures" that no longer flag the message.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.test_avtool import CONF, EICAR, QUARANTINE, SOCKET, _install, attachment_mail

pytestmark = pytest.mark.e2e

AVTOOL = "/usr/local/bin/avtool"  # where share/install.sh links it
CLAMD = "/var/run/clamav/clamd.ctl"
AUTHDAEMON = "/run/courier/authdaemon/socket"
SIGS = Path("/var/lib/clamav/avtool-e2e-false-positive.ndb")
MARKER = b"avtool e2e: an innocent line that today's signatures flag"
FP_NAME = "Avtool.E2E.FalsePositive"
FP_SENDER = "fp-origin@example.org"  # not the recipient's: Return-Path must say this one


@pytest.fixture(scope="module")
def installed(courier_session: float) -> None:
    _install()


@pytest.fixture
def held_by_avtool(courier: None, installed: None) -> Iterator[None]:
    """The filter on, with policy.infected = "quarantine", and an empty quarantine."""
    original = CONF.read_text()
    CONF.write_text('[policy]\ninfected = "quarantine"\n')
    quarantine("purge", "--older-than", "0")
    harness.filterctl("start", "avtool", timeout=10)
    try:
        yield
    finally:
        if SOCKET.exists():
            harness.filterctl("stop", "avtool", timeout=10)
        CONF.write_text(original)
        if SIGS.exists():
            SIGS.unlink()
            reload_clamd(flagged=False)


def quarantine(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [AVTOOL, "quarantine", *args, "-f", str(CONF)]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def clamd_says(data: bytes) -> str:
    """clamd's answer for ``data`` (INSTREAM), e.g. ``stream: OK``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(CLAMD)
        s.sendall(b"zINSTREAM\0" + len(data).to_bytes(4, "big") + data + b"\0\0\0\0")
        return s.recv(4096).rstrip(b"\0").decode()


def reload_clamd(*, flagged: bool) -> None:
    """RELOAD (clamd(8)), then wait until the marker is flagged or no longer is: the reload
    runs in the background and clamd answers with the old database meanwhile."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(CLAMD)
        s.sendall(b"zRELOAD\0")
        assert s.recv(64).rstrip(b"\0") == b"RELOADING"
    if not harness.wait_for(lambda: (FP_NAME in clamd_says(MARKER)) == flagged, 60, 0.2):
        raise AssertionError(f"clamd still says {clamd_says(MARKER)!r} after RELOAD")


def add_false_positive() -> None:
    # .ndb: Name:TargetType:Offset:HexSignature (ClamAV's signatures.md); 0 = any file
    SIGS.write_text(f"{FP_NAME}:0:*:{MARKER.hex()}\n")
    SIGS.chmod(0o644)
    reload_clamd(flagged=True)


def authdaemon_answers() -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(AUTHDAEMON)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def courier_down() -> Iterator[None]:
    """Courier unable to accept local mail: authdaemond stopped, so submit cannot look the
    recipient up (measured: sendmail prints 450 Service temporarily unavailable, exits 75)."""
    subprocess.run(["/usr/sbin/authdaemond", "stop"], check=True, capture_output=True)
    try:
        assert harness.wait_for(lambda: not authdaemon_answers(), 15)
        yield
    finally:
        subprocess.run(["/usr/sbin/authdaemond", "start"], check=True, capture_output=True)
        assert harness.wait_for(authdaemon_answers, 15)


def listed() -> dict[str, dict[str, Any]]:
    r = quarantine("list", "--json")
    assert r.returncode == 0, r.stderr
    return {row["id"]: row for row in map(json.loads, r.stdout.splitlines())}


def test_hold_list_release_purge(held_by_avtool: None) -> None:
    add_false_positive()
    code, text = harness.send(attachment_mail(EICAR, "e.com", "a real one"))
    assert code == 250, text
    fp_body = (MARKER + b"\n").decode()
    for sender, subject in ((FP_SENDER, "a false positive"), ("", "a bounce, say")):
        fp_mail = harness.make_message(subject, fp_body, sender=FP_SENDER)
        code, text = harness.send(fp_mail, sender=sender)  # "": MAIL FROM:<>
        assert code == 250, text
        harness.wait_completed(harness.queue_id(text))
    assert harness.mail_files() == []  # all held, none delivered

    rows = listed()
    assert len(rows) == 3, rows
    (eicar,) = [row for row in rows.values() if row["names"][0].startswith("Eicar")]
    fps = {row["sender"]: row for row in rows.values() if row["names"][0].startswith(FP_NAME)}
    fp, bounce = fps[FP_SENDER], fps[""]
    assert eicar["sender"] == harness.ADDRESS
    for row in (eicar, fp, bounce):
        assert row["recipients"] == [harness.ADDRESS]
        assert row["verdict"] == "infected" and row["origin"] == "filter"
        assert row["received"].endswith("Z") and row["size"] > 0

    mark = harness.log_mark()
    r = quarantine("release", eicar["id"])
    assert r.returncode == 1, r.stderr
    assert "still infected: Eicar" in r.stderr and r.stderr.count("\n") == 1
    time.sleep(1.0)
    assert harness.mail_files() == [] and eicar["id"] in listed()

    SIGS.unlink()
    reload_clamd(flagged=False)
    with courier_down():  # Courier cannot take it now: the entry stays, nothing delivered
        r = quarantine("release", fp["id"])
    assert r.returncode == 2
    assert "Courier refused the message (exit 75: " in r.stderr and r.stderr.count("\n") == 1
    assert "450 Service temporarily unavailable." in r.stderr, r.stderr
    assert fp["id"] in listed() and harness.mail_files() == []
    for row, user in ((fp, None), (bounce, "courier")):  # root, and the filter's user
        r = quarantine("release", row["id"], user=user)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"released {row['id']} to <{harness.ADDRESS}>\n"
    delivered = {}
    for path in harness.wait_for_mail(2):
        got = path.read_bytes()
        head = got.split(b"\n\n", 1)[0].decode()
        assert MARKER in got and head.count("Delivered-To:") == 1
        assert re.search(r"(?m)^From: <?fp-origin@example\.org>?$", head), head
        # the original envelope sender, as Courier's local delivery records it
        (return_path,) = re.findall(r"(?m)^Return-Path: .*$", head)
        delivered[re.findall(r"(?m)^Subject: (.*)$", head)[0]] = return_path
    assert delivered == {
        "a false positive": f"Return-Path: <{FP_SENDER}>",
        "a bounce, say": "Return-Path: <>",  # the null sender stays null
    }
    assert list(listed()) == [eicar["id"]]
    harness.wait_for_log(rf"avtool\S*: quarantine: released {re.escape(fp['id'])} ", mark)
    # (the notices helper: assert here that the postmaster notice for both arrived)

    r = quarantine("purge", "--older-than", "0")
    assert r.returncode == 0 and r.stdout == "purged 1 message(s)\n", r.stderr
    assert listed() == {} and not any(QUARANTINE.iterdir())
