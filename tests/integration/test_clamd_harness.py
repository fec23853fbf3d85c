"""tests/support/clamd_harness.py as a script: `up DIR` leaves a clamd running, `down DIR`
stops it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.clamd_harness import REPO, ClamdServer, _is_our_clamd

pytestmark = pytest.mark.clamd


def test_up_then_down_by_script() -> None:
    d = Path(tempfile.mkdtemp(prefix="avh", dir="/tmp"))
    script = [sys.executable, str(REPO / "tests" / "support" / "clamd_harness.py")]
    try:
        up = subprocess.run(
            [*script, "up", str(d), "--stream-max", "2M"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        server = ClamdServer.load(d)
        assert f"clamd pid {server.pid}" in up.stdout
        assert server.ping() and server.pid is not None
        assert "StreamMaxLength 2M\n" in server.conf.read_text()
        assert server.command("VERSION").startswith("ClamAV ")
        subprocess.run([*script, "down", str(d)], timeout=60, check=True)
        assert not _is_our_clamd(server.pid, server.conf)
        assert not server.ping()
        assert not (d / "harness.json").exists()
    finally:
        subprocess.run([*script, "down", str(d)], timeout=60, check=False)
        shutil.rmtree(d, ignore_errors=True)
