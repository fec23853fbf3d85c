"""``avtool config --check`` against the real test clamd: passes, and fails with a fix."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from avtool.cli.app import app
from avtool.config import Config
from avtool.doctor import courier as doctor_courier
from tests.integration.serve_support import config_for, start_daemon

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


def test_courier_checks_find_a_dead_and_a_live_filter_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clamd_server: Any
) -> None:
    """A socket file nobody listens on (a crashed filter) is a failure: Courier answers 432 to
    all mail. The live daemon's socket answers; probing it logs no warning."""
    filters, active = tmp_path / "filters", tmp_path / "active"
    for d in (filters, active):
        d.mkdir()
    (filters / "avtool").write_text("#!/bin/sh\n")
    (filters / "avtool").chmod(0o755)
    monkeypatch.setattr(doctor_courier, "FILTERS", filters)
    monkeypatch.setattr(doctor_courier, "ACTIVE", active)
    dead = tmp_path / "state" / "allfilters"
    dead.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(dead / "avtool"))  # bound, never listening: what a killed daemon leaves
    cfg = Config.resolve(env={}, overrides={"serve.courier_dir": str(tmp_path / "state")})
    found = [f for f in doctor_courier.check_courier(cfg) if "filter socket" in f.what]
    assert [f.status for f in found] == ["fail"] and "is dead" in found[0].what
    assert found[0].fix.startswith("courierfilter stop; courierfilter start")

    live = Path(tempfile.mkdtemp(prefix="avd", dir="/tmp"))
    (live / "allfilters").mkdir()
    conf = config_for(str(clamd_server.unix_socket), f'courier_dir = "{live}"\n')
    daemon = start_daemon(conf, socket_path=live / "allfilters" / "avtool")
    try:
        cfg = Config.resolve(env={}, overrides={"serve.courier_dir": str(live)})
        found = [f for f in doctor_courier.check_courier(cfg) if "filter socket" in f.what]
        assert [f.status for f in found] == ["ok"] and "answers" in found[0].what, daemon.log()
        time.sleep(0.3)
    finally:
        assert daemon.stop() == 0
        shutil.rmtree(live, ignore_errors=True)
    assert "WARNING" not in daemon.log()
