"""The data file's directory swapped for a link after the message was opened (issue 16).

Between ``Pipeline.prepare`` (the paths checked, the data file opened) and ``complete``, a
second process renames the message's spool directory away and puts a symbolic link to a
directory of its own in its place, holding files of the same names. What the filter quarantines
and rewrites must still be the message it scanned, in the spool: courier/spool.py keeps the
data file and its directory open from prepare to complete, and the header peek, the rewrite and
the quarantine copy use those descriptors, never the path again. (Before, each reopened the path
and followed the link: the quarantine kept the other file, the rewrite wrote into the other
directory.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from avtool.courier.protocol import Request
from avtool.daemon.pipeline import Judged, Outcome, Pipeline, Prepared
from avtool.engine import Engine
from avtool.engine.verdict import Verdict
from tests.conftest import make_config
from tests.support.clamd_harness import ClamdServer
from tests.support.serve import EICAR, Spool, mail

pytestmark = pytest.mark.clamd
SWAP = "import os, sys; d, a = sys.argv[1:]; os.rename(d, d + '.real'); os.symlink(a, d)"
THEIRS = b"Subject: not the scanned message\n\nsecret of another user\n"


def swap_after_the_scan(monkeypatch: pytest.MonkeyPatch, directory: Path, theirs: Path) -> None:
    """When the verdict is in (the data file open, its checks long done), another process
    swaps ``directory`` for a link to ``theirs``."""
    judge = Pipeline.judge

    def swapped(self: Pipeline, prepared: Prepared, verdict: Verdict) -> Judged:
        subprocess.run([sys.executable, "-c", SWAP, str(directory), str(theirs)], check=True)
        return judge(self, prepared, verdict)

    monkeypatch.setattr(Pipeline, "judge", swapped)


def handle(
    clamd: ClamdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: Any
) -> tuple[Outcome, Path, Path, bytes]:
    """A message with EICAR through Pipeline.handle with the swap: (outcome, the message's
    real directory, the other one, the original bytes)."""
    (tmp_path / "spool").mkdir()
    data, (ctl,) = Spool(tmp_path / "spool").message(mail(attachment=EICAR))
    original = data.read_bytes()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / data.name).write_bytes(THEIRS)
    (theirs / ctl.name).write_text(ctl.read_text().replace("rcpt@", "them@"))
    cfg = make_config(
        str(clamd.unix_socket),
        **{"serve.spool_dir": str(tmp_path / "spool"), "policy.quarantine_dir": str(tmp_path / "q")}
        | values,
    )
    swap_after_the_scan(monkeypatch, data.parent, theirs)
    request = Request(str(data), (str(ctl),))
    outcome = Pipeline(cfg, Engine.from_config(cfg)).handle(request, time.monotonic() + 20)
    assert data.parent.is_symlink()  # the swap was made
    return outcome, Path(str(data.parent) + ".real"), theirs, original


def test_the_quarantine_keeps_the_scanned_file_not_the_one_swapped_in(
    clamd_server: ClamdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, real, theirs, original = handle(
        clamd_server, tmp_path, monkeypatch, **{"policy.infected": "quarantine"}
    )
    assert outcome.decision is not None and outcome.decision.action == "quarantine"
    (kept,) = (tmp_path / "q").iterdir()
    assert (kept / "data").read_bytes() == original
    assert "rcpt@example.test" in (kept / "control.0").read_text()
    assert THEIRS not in (kept / "data").read_bytes()


def test_the_header_rewrite_stays_in_the_spool(
    clamd_server: ClamdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, real, theirs, original = handle(
        clamd_server, tmp_path, monkeypatch, **{"policy.infected": "pass"}
    )
    assert outcome.reply.code == 200, outcome.reply
    (data,) = real.glob("D*")
    rewritten = data.read_bytes()
    assert rewritten.startswith(b"X-Virus-") and rewritten.endswith(original)
    assert (theirs / data.name).read_bytes() == THEIRS  # neither read nor replaced
    assert sorted(p.name for p in theirs.iterdir()) == sorted([data.name, "1.0.ctl"])


def test_drop_marks_go_into_the_scanned_messages_control_file(
    clamd_server: ClamdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marked delivered in the other file, the real one would be delivered: infected mail out."""
    outcome, real, theirs, _ = handle(
        clamd_server, tmp_path, monkeypatch, **{"policy.infected": "drop"}
    )
    assert outcome.decision is not None and outcome.decision.action == "drop"
    (ctl,) = real.glob("*.ctl")
    assert " R 250 Ok - dropped by" in ctl.read_text()
    assert "dropped by" not in (theirs / ctl.name).read_text()
