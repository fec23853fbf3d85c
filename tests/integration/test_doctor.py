"""``avtool config --check`` against the real test clamd: passes, and fails with a fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.clamd


def check(*sets: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "avtool", "config", "--check", "-f", str(tmp_path / "c.conf")]
    (tmp_path / "c.conf").write_text("")
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_check_passes_against_the_test_clamd(clamd_server: Any, tmp_path: Path) -> None:
    result = check(f"clamd.backends={clamd_server.unix_socket}", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok   clamd {clamd_server.unix_socket} answers PING" in result.stdout
    assert "detects EICAR by FILDES" in result.stdout
    assert "FAIL" not in result.stdout


def test_check_instream_over_tcp(clamd_server: Any, tmp_path: Path) -> None:
    result = check(
        f"clamd.backends={clamd_server.tcp_address}", "scan.max_size=5M", tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout
    assert "detects EICAR by INSTREAM" in result.stdout


def test_wrong_socket_fails_with_a_fix(tmp_path: Path) -> None:
    result = check(f"clamd.backends={tmp_path}/nope.sock", tmp_path=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    fail = next(i for i, line in enumerate(lines) if line.startswith("FAIL"))
    assert "does not answer PING" in lines[fail]
    assert lines[fail + 1].strip().startswith("fix: ")
    assert "Traceback" not in result.stderr


def test_stream_limit_mismatch_fails(clamd_server: Any, tmp_path: Path) -> None:
    # the harness clamd has StreamMaxLength 10M; 25M over TCP (INSTREAM) cannot fit
    result = check(f"clamd.backends={clamd_server.tcp_address}", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "StreamMaxLength 10M < scan.max_size 25M" in result.stdout
