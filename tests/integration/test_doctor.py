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
from avtool.doctor.database import check_database, database_findings
from avtool.engine import Backend, clamdconf
from avtool.engine.clamdconf import ClamdConf
from tests.fakes.clamd import FakeClamd
from tests.support.clamd_harness import REPO, ClamdServer
from tests.support.debian_clamd import DebianClamd
from tests.support.serve import config_for, start_daemon

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


def only_the_test_signatures_fail(result: subprocess.CompletedProcess[str]) -> bool:
    """The harness clamd holds avtool's test signatures only: that one FAIL, no other."""
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    return result.returncode == 1 and len(fails) == 1 and "test or custom signatures" in fails[0]


def test_check_against_the_test_clamd_fails_only_on_its_test_signatures(
    clamd_server: Any, tmp_path: Path
) -> None:
    """The harness clamd detects EICAR, and holds nothing but avtool's test signatures: the
    doctor says it detects no real virus (issue 15: it used to print only ok lines)."""
    result = check(f"clamd.backends={clamd_server.unix_socket}", tmp_path=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ok   clamd {clamd_server.unix_socket} answers PING" in result.stdout
    assert "detects EICAR by FILDES" in result.stdout
    (fail,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert "holds test or custom signatures only (no main and daily database" in fail
    assert "avtool-test.hdb" in fail and "it detects no real virus" in fail
    assert "fix: run freshclam" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_check_instream_over_tcp(clamd_server: Any, tmp_path: Path) -> None:
    result = check(
        f"clamd.backends={clamd_server.tcp_address}", "scan.max_size=5M", tmp_path=tmp_path
    )
    assert only_the_test_signatures_fail(result), result.stdout
    assert "detects EICAR by INSTREAM" in result.stdout
    assert "limits allow scan.max_size 5M" in result.stdout


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
    assert "without scanning" in found["filter avtool is not enabled"].what
    # not enabled: no second line claiming it is enabled (issue 15)
    assert not any("while the filter is enabled" in f.what for f in found.values())
    assert any("does not name esmtp" in w and f.status == "fail" for w, f in found.items())
    (active / "avtool").symlink_to(filters / "avtool")  # enabled, and no socket: unfiltered
    found = {f.what.split(":")[0]: f for f in doctor_courier.check_courier(cfg)}
    sock = f"no filter socket {state}/allfilters/avtool"
    assert found[sock].status == "fail"
    assert "UNFILTERED while the filter is enabled" in found[sock].what


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
    (active / "avtool").symlink_to(filters / "avtool")  # enabled
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


# ---- what clamd's own clamd.conf and database decide (issue 15) ---------------------------


def _ctime(seconds_ago: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(time.time() - seconds_ago))


@pytest.mark.parametrize(
    ("days", "status"), [(0.5, "ok"), (3.0, "warn"), (9.0, "fail")], ids=["fresh", "2d+", "7d+"]
)
def test_daily_database_age_from_clamd_s_version(tmp_path: Path, days: float, status: str) -> None:
    """A fake clamd answering VERSION as clamd does with a daily database
    (docs/notes/clamav.md §2)."""
    reply = f"ClamAV 1.4.6/27012/{_ctime(days * 86400)}\0".encode()
    with FakeClamd(tmp_path / "fake.sock", reply=reply) as fake:
        (finding,) = check_database(Backend(fake.address), None, time.time())
    assert finding.status == status, finding
    assert f"daily database 27012 of {_ctime(days * 86400)} is {days:.1f} days old" in finding.what
    assert (finding.fix.startswith("run freshclam")) == (status != "ok")


def test_database_dir_without_main_fails_even_if_version_names_a_daily(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "daily.cld").write_bytes(b"ClamAV-VDB:x:27012:")
    (db / "avtool-test.hdb").write_text("")
    conf = ClamdConf(tmp_path / "clamd.conf", {"DatabaseDirectory": str(db)})
    version = f"ClamAV 1.4.6/27012/{_ctime(60)}"
    found = list(database_findings("/x.sock", version, conf, time.time()))
    assert [f.status for f in found] == ["fail"]
    assert "no main database" in found[0].what and "avtool-test.hdb, daily.cld" in found[0].what
    (db / "main.cvd").write_bytes(b"ClamAV-VDB:")
    found = list(database_findings("/x.sock", version, conf, time.time()))
    assert [f.status for f in found] == ["ok"]


def test_alert_settings_off_warn_and_fail_against_policy_unchecked(tmp_path: Path) -> None:
    """A real clamd started with Debian's clamd.conf as its postinst writes it (no Alert*): the
    doctor finds that conf through /proc and says what comes back clean, with the fix."""
    server = _debian_clamd()
    try:
        backend = f"clamd.backends={server.unix_socket}"
        result = check(backend, tmp_path=tmp_path)
        lines = result.stdout.splitlines()
        (line,) = [x for x in lines if "AlertExceedsMax" in x and not x.strip().startswith("fix")]
        assert line.startswith("warn ")
        assert "AlertEncryptedArchive, AlertEncryptedDoc, AlertExceedsMax off in" in line
        assert "nested over 16 deep" in line and "come back clean, not unchecked" in line
        assert "(no X-Virus-Status: Unchecked field)" in line
        fix = lines[lines.index(line) + 1].strip()
        assert fix.startswith("fix: set AlertEncryptedArchive yes AlertEncryptedDoc yes ")
        result = check(backend, "policy.unchecked=reject", tmp_path=tmp_path)
        assert any(
            x.startswith("FAIL") and "policy.unchecked = reject never applies" in x
            for x in result.stdout.splitlines()
        ), result.stdout
        assert "Traceback" not in result.stdout + result.stderr
    finally:
        server.stop()
    # after share/clamd-config.sh, the same clamd (restarted) says ok
    subprocess.run(["bash", str(REPO / "share" / "clamd-config.sh"), str(server.conf)], check=False)
    server.start()
    try:
        result = check(f"clamd.backends={server.unix_socket}", tmp_path=tmp_path)
        assert "reports encrypted and over-limit content" in result.stdout, result.stdout
        assert "AlertExceedsMax" not in result.stdout
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.parametrize("bad", ["directory", "garbage"])
def test_unreadable_or_unparsable_clamd_conf_is_one_warning(
    clamd_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    conf = tmp_path / "clamd.conf"
    if bad == "directory":
        conf.mkdir()
    else:
        conf.write_bytes(b"LocalSocket /x\n\x00\x01\xff binary junk = 1\n")
    monkeypatch.setattr(clamdconf, "PROC", tmp_path / "no-proc")  # no running clamd found
    monkeypatch.setattr(clamdconf, "DEFAULT_CLAMD_CONF", conf)
    result = check(f"clamd.backends={clamd_server.unix_socket}", tmp_path=tmp_path)
    lines = [x for x in result.stdout.splitlines() if str(conf) in x]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("warn ")
    expected = "Is a directory" if bad == "directory" else ":2: not a clamd.conf option line"
    assert expected in lines[0] and "clamd's settings cannot be checked" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert "crashed" not in result.stdout


def _debian_clamd() -> ClamdServer:
    """A clamd on Debian's generated clamd.conf, only its socket, database, log and
    foreground changed (it runs as a child here, with the test signatures)."""
    directory = Path(tempfile.mkdtemp(prefix="avdeb", dir="/tmp"))
    server = DebianClamd(directory)
    server.start()
    return server


def test_notify_sendmail_is_checked_as_root_would_run_it() -> None:
    """notices, the digest and `quarantine release` submit through notify.sendmail, as root
    too: the doctor says when it is missing, not executable, or replaceable by another user
    (red with the trust check skipped: the world-writable directory passes as ok)."""
    from tests.conftest import make_config
    from tests.support.dirs import public_dir

    def finding(path: Path) -> tuple[str, str]:
        f = doctor_courier._sendmail(make_config(**{"notify.sendmail": str(path)}))
        return f.status, f.what

    with public_dir("avsm") as d:
        program = d / "sendmail"
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
        assert finding(program)[0] == "ok"
        assert finding(d / "nothing") == (
            "warn",
            f"notify.sendmail {d / 'nothing'} is missing: notices, the digest and "
            "`quarantine release` cannot send mail",
        )
        program.chmod(0o644)
        assert "is not executable" in finding(program)[1]
        program.chmod(0o757)
        status, what = finding(program)
        assert status == "warn" and "writable by others" in what and "root will not run" in what
        program.chmod(0o755)
        d.chmod(0o777)  # noqa: S103 - the attack: anyone may swap the program
        status, what = finding(program)
        assert status == "warn" and "root will not run it" in what
