"""A second virus cannot hide behind the first (issue 15), against a real clamd.

FILDES and INSTREAM answer with clamd's first match only. The clamd here has one more test
signature, ``Avtool.Pass.Test`` (a marker string), which the tests' policy lets pass: a message
whose first match is the marker and which also carries EICAR must still be refused.
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.engine import Engine, Failed, Infected, secondlook
from tests.conftest import make_config
from tests.support.clamd_harness import ClamdServer
from tests.support.serve import EICAR, config_for, start_daemon

pytestmark = pytest.mark.clamd

MARKER = b"AVTOOL-PASS-MARKER-0123456789"
PASS_SIG = "Avtool.Pass.Test:0:*:" + MARKER.hex() + "\n"
POLICY = '\n[policy]\npass = ["Avtool.Pass.Test*"]\n'


@pytest.fixture(scope="module")
def marker_clamd() -> Iterator[ClamdServer]:
    directory = Path(tempfile.mkdtemp(prefix="avam", dir="/tmp"))
    server = ClamdServer(directory)
    server.prepare()
    (server.db_dir / "avtool-pass.ndb").write_text(PASS_SIG)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def multipart(*payloads: bytes) -> bytes:
    parts = b"".join(
        b"--b1\nContent-Type: application/octet-stream\n"
        b'Content-Disposition: attachment; filename="f%d.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" % i + base64.encodebytes(p)
        for i, p in enumerate(payloads)
    )
    return (
        b"From: sender@example.com\nTo: rcpt@example.test\nSubject: two\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="b1"\n\n' + parts + b"--b1--\n"
    )


def zipped(**members: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize(
    "message",
    [multipart(MARKER, EICAR), multipart(zipped(a=MARKER, b=EICAR))],
    ids=["two-parts", "one-zip"],
)
def test_clamd_names_only_the_marker_and_the_second_look_finds_eicar(
    marker_clamd: ClamdServer, message: bytes
) -> None:
    engine = Engine.from_config(make_config(str(marker_clamd.unix_socket)))
    first = secondlook.scan_bytes(engine, message)
    assert isinstance(first, Infected) and first.names == ("Avtool.Pass.Test.UNOFFICIAL",), first
    every = secondlook.every_name(first, message, engine)
    assert isinstance(every, Infected)
    assert every.names[0] == "Avtool.Pass.Test.UNOFFICIAL"
    assert any(n.startswith("Eicar-Test-Signature") for n in every.names), every


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_pass_glob_first_and_eicar_later_is_rejected(
    marker_clamd: ClamdServer, transport: str
) -> None:
    """The daemon: FILDES in its loop (unix), INSTREAM in a worker (tcp)."""
    address = str(marker_clamd.unix_socket) if transport == "unix" else marker_clamd.tcp_address
    daemon = start_daemon(config_for(address, POLICY))
    try:
        data, ctl = daemon.spool.message(multipart(MARKER, EICAR))
        reply = daemon.filter(data, ctl)
        assert reply.startswith("550 5.7.1 Virus found: Avtool.Pass.Test, Eicar-Test-Sig"), reply
        # the marker alone still passes, with the field, after the same second look
        data, ctl = daemon.spool.message(multipart(MARKER, b"nothing here\n"))
        assert daemon.filter(data, ctl) == "200 Ok\n"
        assert b"X-Virus-Status: Infected (Avtool.Pass.Test)" in data.read_bytes()
        # plain EICAR first: rejected at once, no second look
        data, ctl = daemon.spool.message(multipart(EICAR, MARKER))
        assert daemon.filter(data, ctl).startswith("550 ")
    finally:
        assert daemon.stop() == 0
    log = daemon.log()
    assert log.count("second look at") == 2, log
    assert "Traceback" not in log


def test_a_second_look_that_cannot_scan_defers(marker_clamd: ClamdServer, tmp_path: Path) -> None:
    """clamd gone between the first scan and the second look: no proof, so Failed (defer)."""
    engine = Engine.from_config(
        make_config(str(tmp_path / "gone.sock"), connect_timeout=0.2, scan_timeout=1.0)
    )
    first = Infected(("Avtool.Pass.Test.UNOFFICIAL",))
    verdict = secondlook.every_name(first, multipart(MARKER, EICAR), engine)
    assert isinstance(verdict, Failed) and "second look" in verdict.reason, verdict
