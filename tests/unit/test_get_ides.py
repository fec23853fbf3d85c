"""share/get_ides.sh: progress on stdout, '#' problems on stderr, a final subject line."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "share" / "get_ides.sh"


def run(tmp_path: Path, conf: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The script as root runs it directly, with ``conf`` and a state dir of the test's own (and
    no rescan unless ``conf`` asks for one)."""
    (tmp_path / "conf").write_text(f'STATE_DIR="{tmp_path}/state"\nRESCAN_COMMAND=true\n{conf}')
    env = dict(os.environ, AVTOOL_GET_IDES_CONF=str(tmp_path / "conf"))
    env.pop("SUDO_UID", None)
    return subprocess.run(
        ["sh", str(SCRIPT), *args], input="announcement\n", capture_output=True, text=True,
        env=env, timeout=30, check=False,
    )  # fmt: skip


def test_all_steps_ok(tmp_path: Path) -> None:
    conf = (
        'UPDATE_COMMAND="echo fetched 27001"\nCHECK_COMMAND=true\nRELOAD_COMMAND="echo reloaded"\n'
    )
    result = run(tmp_path, conf)
    lines = result.stdout.splitlines()
    assert lines[-1] == "subject: OK" and result.returncode == 0
    assert "fetched 27001" in lines and "reloaded" in lines
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("conf", "why"),
    [
        ("UPDATE_COMMAND=false\nCHECK_COMMAND=true\nRELOAD_COMMAND=true\n", "update"),
        ("UPDATE_COMMAND=true\nCHECK_COMMAND=false\nRELOAD_COMMAND=true\n", "check"),
        ("UPDATE_COMMAND=true\nCHECK_COMMAND=true\nRELOAD_COMMAND=false\n", "reload"),
    ],
)
def test_a_failing_step_says_which(tmp_path: Path, conf: str, why: str) -> None:
    result = run(tmp_path, conf)
    assert result.stdout.splitlines()[-1] == f"subject: FAILED {why}"
    assert result.returncode == 1 and result.stderr.strip()


def test_new_clears_the_database_first(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "daily.cld").write_text("old")
    conf = f'DB_DIR="{db}"\nUPDATE_COMMAND=true\nCHECK_COMMAND=true\nRELOAD_COMMAND=true\n'
    result = run(tmp_path, conf, "new")
    assert result.stdout.splitlines()[-1] == "subject: OK"
    assert not (db / "daily.cld").exists()


# ---- what a forged announcement can make root do: one run at a time, one per interval --------
def _runs(tmp_path: Path) -> list[str]:
    path = tmp_path / "runs"
    return path.read_text().splitlines() if path.exists() else []


def test_concurrent_requests_make_exactly_one_run(tmp_path: Path) -> None:
    """Six deliveries at once (Courier runs several): the lock lets one update run, the others
    end at once, kept and tagged, exit 0. MIN_INTERVAL=0: only the lock is at work here."""
    conf = (
        f'MIN_INTERVAL=0\nUPDATE_COMMAND="echo run >> {tmp_path}/runs; sleep 2"\n'
        "CHECK_COMMAND=true\nRELOAD_COMMAND=true\nRESCAN_COMMAND=true\n"
    )
    (tmp_path / "conf").write_text(f'STATE_DIR="{tmp_path}/state"\n{conf}')
    env = dict(os.environ, AVTOOL_GET_IDES_CONF=str(tmp_path / "conf"))
    env.pop("SUDO_UID", None)
    procs = [
        subprocess.Popen(
            ["sh", str(SCRIPT)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for _ in range(6)
    ]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6
    assert _runs(tmp_path) == ["run"]
    tags = sorted(out.splitlines()[-1] for out in outs)
    assert tags == ["subject: OK"] + ["subject: SKIPPED busy"] * 5, outs
    assert sum("skipped: another update is running" in out for out in outs) == 5


def test_a_second_request_within_the_interval_is_skipped(tmp_path: Path) -> None:
    conf = (
        f'MIN_INTERVAL=3600\nUPDATE_COMMAND="echo run >> {tmp_path}/runs"\n'
        "CHECK_COMMAND=true\nRELOAD_COMMAND=true\n"
    )
    first = run(tmp_path, conf)
    assert first.stdout.splitlines()[-1] == "subject: OK"
    second = run(tmp_path, conf, "new")  # "new" is bounded alike
    assert second.returncode == 0  # not an error: maildrop must not defer and redeliver
    assert second.stdout.splitlines()[-1] == "subject: SKIPPED interval"
    assert "skipped: last update at " in second.stdout and " UTC" in second.stdout
    assert _runs(tmp_path) == ["run"]
    (tmp_path / "state" / "last").write_text(f"{int(time.time()) - 3601}\n")  # an hour later
    assert run(tmp_path, conf).stdout.splitlines()[-1] == "subject: OK"
    assert _runs(tmp_path) == ["run", "run"]


def test_a_failed_run_counts_too(tmp_path: Path) -> None:
    """The stamp is written when a run starts: an update that fails fast cannot be retried at
    once by mail (each try would hit the mirrors)."""
    conf = f'UPDATE_COMMAND="echo run >> {tmp_path}/runs; exit 1"\n'
    assert run(tmp_path, conf).stdout.splitlines()[-1] == "subject: FAILED update"
    assert run(tmp_path, conf).stdout.splitlines()[-1] == "subject: SKIPPED interval"
    assert _runs(tmp_path) == ["run"]


def test_a_hanging_step_is_killed_by_the_script_itself(tmp_path: Path) -> None:
    """RUN_TIMEOUT bounds the run as root (through sudo nobody else can kill it): the step and
    its children die, the lock is free again, the run still counts for the interval."""
    conf = (
        f'RUN_TIMEOUT=2\nUPDATE_COMMAND="(sleep 8; echo late >> {tmp_path}/runs) & sleep 30"\n'
        "CHECK_COMMAND=true\nRELOAD_COMMAND=true\n"
    )
    started = time.monotonic()
    result = run(tmp_path, conf)
    assert time.monotonic() - started < 10
    assert result.stdout.splitlines()[-1] == "subject: FAILED update (timeout)"
    time.sleep(7)
    assert _runs(tmp_path) == []  # its background child died with it
    again = run(tmp_path, "MIN_INTERVAL=0\nUPDATE_COMMAND=true\nCHECK_COMMAND=true\n"
                "RELOAD_COMMAND=true\n")  # fmt: skip
    assert again.stdout.splitlines()[-1] == "subject: OK"  # nothing kept the lock


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_state_dir_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    """Whoever can write the state dir could hold the lock or rewrite the stamp."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state").chmod(mode)
    conf = f'UPDATE_COMMAND="echo run >> {tmp_path}/runs"\nCHECK_COMMAND=true\n'
    result = run(tmp_path, conf)
    assert result.stdout.splitlines()[-1] == "subject: FAILED state"
    assert _runs(tmp_path) == []


def test_the_lock_file_is_root_s_alone(tmp_path: Path) -> None:
    """Another user who could open the lock file could hold the lock (flock needs only an fd)
    and make every update skip."""
    run(tmp_path, "UPDATE_COMMAND=true\nCHECK_COMMAND=true\nRELOAD_COMMAND=true\n")
    st = (tmp_path / "state" / "lock").stat()
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="root drops to clamav for the check")
def test_the_check_runs_as_clamav_not_root(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A flaw in a database parser must not run as root: the default check (clamscan) runs as
    user clamav. A clamscan stub on PATH says who it runs as, then runs the real one."""
    try:
        clamav = pwd.getpwnam("clamav")
    except KeyError:
        pytest.skip("no user clamav")
    real = shutil.which("clamscan")
    if real is None:
        pytest.skip("clamscan is not installed")
    shared = Path(tempfile.mkdtemp(prefix="avgi", dir="/tmp"))  # pytest's tmp is root's 0700
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    stub_dir, db = shared / "bin", shared / "db"
    stub_dir.mkdir()
    db.mkdir()
    (db / "test.ndb").write_text("Avtool.Test.Probe:0:*:6e6f742d696e2d70726f6265\n")
    stub = stub_dir / "clamscan"
    stub.write_text(f'#!/bin/sh\necho "check uid: $(id -u) gid: $(id -g)"\nexec {real} "$@"\n')
    stub.chmod(0o755)
    for path in (shared, stub_dir, db):
        path.chmod(0o755)
    (db / "test.ndb").chmod(0o644)
    conf = f'PATH="{stub_dir}:$PATH"\nDB_DIR="{db}"\nUPDATE_COMMAND=true\nRELOAD_COMMAND=true\n'
    result = run(tmp_path, conf)
    assert f"check uid: {clamav.pw_uid} gid: {clamav.pw_gid}" in result.stdout, result.stdout
    assert "== checking that the database loads (as user clamav)" in result.stdout
    assert result.stdout.splitlines()[-1] == "subject: OK", result.stdout + result.stderr


# ---- issue 18: the rescan after a successful update ----------------------------------------
STEPS_OK = "UPDATE_COMMAND=true\nCHECK_COMMAND=true\nRELOAD_COMMAND=true\n"


@pytest.mark.parametrize(
    ("rc", "said"),
    [
        (0, None),
        (1, "##the rescan found infected mail that was delivered before this update"),
        (2, "#the rescan failed (exit 2)"),
    ],
)
def test_a_successful_update_ends_with_a_rescan(tmp_path: Path, rc: int, said: str | None) -> None:
    """Its output goes into the mail; what it finds, or its failure, is no failure of the
    update (the subject stays OK), and is said on stderr (syslog)."""
    conf = f'{STEPS_OK}RESCAN_COMMAND="echo rescanned as $(id -u); exit {rc}"\n'
    result = run(tmp_path, conf)
    lines = result.stdout.splitlines()
    assert lines[-2] == f"rescanned as {os.geteuid()}" and lines[-1] == "subject: OK"
    assert lines[-3].startswith("== rescanning delivered mail: echo rescanned")
    assert (said is None and "rescan" not in result.stderr) or (said and said in result.stderr)
    assert result.returncode == 0


def test_no_rescan_after_a_failed_update(tmp_path: Path) -> None:
    conf = f'UPDATE_COMMAND=false\nRESCAN_COMMAND="echo run >> {tmp_path}/runs"\n'
    result = run(tmp_path, conf)
    assert result.stdout.splitlines()[-1] == "subject: FAILED update"
    assert _runs(tmp_path) == [] and "rescanning" not in result.stdout


def test_the_rescan_is_bounded_by_run_timeout(tmp_path: Path) -> None:
    conf = f'RUN_TIMEOUT=3\n{STEPS_OK}RESCAN_COMMAND="sleep 60"\n'
    started = time.monotonic()
    result = run(tmp_path, conf)
    assert time.monotonic() - started < 20
    assert result.stdout.splitlines()[-1] == "subject: OK"
    assert "##the rescan stopped at RUN_TIMEOUT (3 s)" in result.stderr


def test_the_default_rescan_command_is_the_installed_avtool() -> None:
    text = SCRIPT.read_text()
    assert 'RESCAN_COMMAND="/usr/local/bin/avtool rescan --notify --quiet"' in text
