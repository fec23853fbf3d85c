"""``avtool config --check`` against the real test clamd: passes, and fails with a fix."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from avtool.cli.app import app
from avtool.config import Config
from avtool.doctor import courier as doctor_courier

pytestmark = pytest.mark.clamd


@pytest.fixture(autouse=True)
def _no_courier_filter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This machine's Courier may have avtool installed (the e2e tests do that): look elsewhere."""
    monkeypatch.setattr(doctor_courier, "FILTERS", tmp_path / "no-filters")


def check(*sets: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = ["config", "--check", "-f", str(tmp_path / "c.conf")]
    (tmp_path / "c.conf").write_text("")
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


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


def test_courier_checks_find_a_disabled_filter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    filters, active, state = tmp_path / "filters", tmp_path / "active", tmp_path / "state"
    for d in (filters, active, state / "allfilters"):
        d.mkdir(parents=True)
    (filters / "avtool").write_text("#!/bin/sh\n")
    (filters / "avtool").chmod(0o755)
    enable = tmp_path / "enablefiltering"
    enable.write_text("local\nesmtp\n")  # only the first line counts
    monkeypatch.setattr(doctor_courier, "FILTERS", filters)
    monkeypatch.setattr(doctor_courier, "ACTIVE", active)
    monkeypatch.setattr(doctor_courier, "ENABLEFILTERING", enable)
    cfg = Config.resolve(env={}, overrides={"serve.courier_dir": str(state)})
    found = {f.what.split(":")[0]: f for f in doctor_courier.check_courier(cfg)}
    assert found["filter avtool is not enabled"].fix == "filterctl start avtool"
    sock = f"no filter socket {state}/allfilters/avtool"
    assert found[sock].status == "fail"
    assert any("does not name esmtp" in w and f.status == "fail" for w, f in found.items())
