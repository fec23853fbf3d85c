"""run-get-ides: subject tagging, severities, timeouts, failures, hostile input (real scripts)."""

from __future__ import annotations

import os
import syslog
import time
from pathlib import Path

import pytest

from avtool import updates

ANNOUNCEMENT = (
    b"From: announce@example.org\nTo: updates@example.test\nSubject: New daily 27000\n"
    b"Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\nbody\n"
)


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "get_ides.sh"
    monkeypatch.setattr(updates, "SCRIPT", path)
    return path


def write(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_last_subject_wins_and_is_not_in_the_body(script: Path) -> None:
    write(
        script,
        'cat >/dev/null\necho step 1\necho "subject: BUSY"\necho step 2\necho "Subject: OK"\n',
    )
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=10)
    assert outcome.tag == "OK" and outcome.returncode == 0
    assert outcome.stdout == b"step 1\nstep 2\n"
    out = updates.tagged_message(ANNOUNCEMENT, outcome)
    head, body = out.split(b"\n\n", 1)
    assert b"Subject: [OK] New daily 27000" in head.split(b"\n")
    assert b"From: announce@example.org" in head and b"7bit" not in head
    assert body == b"step 1\nstep 2\n"


def test_the_script_reads_the_message_and_gets_its_args(script: Path) -> None:
    write(script, 'echo "args: $*"\ngrep -c "New daily" -\n')
    outcome = updates.run(ANNOUNCEMENT, ["new", "x y"], run_as=None, timeout=10)
    assert outcome.stdout == b"args: new x y\n1\n"
    assert outcome.tag == "OK"  # no subject line and exit 0


def test_no_subject_and_nonzero_exit_still_yields_a_message(script: Path) -> None:
    write(script, "echo '#half done' >&2\nexit 3\n")
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=10)
    assert outcome.tag == "FAILED: exit 3"
    assert b"Subject: [FAILED: exit 3] New daily 27000" in updates.tagged_message(
        ANNOUNCEMENT, outcome
    )


def test_timeout_kills_the_whole_process_group(script: Path, tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    write(script, f"(sleep 3; touch {marker}) &\nsleep 30\n")
    started = time.monotonic()
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=1)
    assert outcome.tag == "TIMEOUT" and outcome.returncode is None
    assert time.monotonic() - started < 5
    time.sleep(3.5)
    assert not marker.exists()  # its background child died with it


def test_missing_script_is_a_clear_failure(script: Path) -> None:
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=5)
    assert outcome.tag.startswith("FAILED: cannot run ")


@pytest.mark.parametrize(
    ("line", "level", "text"),
    [
        (b"disk full", syslog.LOG_CRIT, b"disk full"),
        (b"#retrying", syslog.LOG_ERR, b"retrying"),
        (b"### mirror slow", syslog.LOG_NOTICE, b"mirror slow"),
        (b"########## chatter", syslog.LOG_DEBUG, b"chatter"),
    ],
)
def test_severity_steps_down_per_hash(line: bytes, level: int, text: bytes) -> None:
    assert updates.severity(line) == (level, text)


def test_stderr_to_syslog_without_subject_lines(script: Path) -> None:
    write(script, "echo 'subject: OK' >&2\necho '##note' >&2\n")
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=10)
    logged: list[tuple[int, str]] = []
    updates.log_stderr(outcome.stderr_lines, lambda level, text: logged.append((level, text)))
    assert logged == [(syslog.LOG_WARNING, "note")]
    assert outcome.tag == "OK"  # a subject line on stderr counts when stdout has none


def test_hostile_subject_cannot_inject_headers(script: Path) -> None:
    write(script, "printf 'subject: OK\\rBcc: victim@example.org\\033[31m\\n'\n")
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=10)
    head = updates.tagged_message(ANNOUNCEMENT, outcome).split(b"\n\n", 1)[0]
    assert b"\r" not in head and b"\x1b" not in head
    assert not any(line.startswith(b"Bcc:") for line in head.split(b"\n"))


def test_huge_output_is_bounded(script: Path) -> None:
    write(script, "head -c 5000000 /dev/zero | tr '\\0' 'x'\necho\necho 'subject: OK'\n")
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=20)
    assert len(outcome.stdout) <= updates.MAX_OUTPUT + 1


def test_sudo_is_used_with_a_fixed_program() -> None:
    assert updates.command(["new"], (1001, 1002)) == [
        "sudo", "-n", "-u", "#1001", "-g", "#1002", "--", str(updates.SCRIPT), "new",
    ]  # fmt: skip


def test_message_without_subject_gets_one(script: Path) -> None:
    write(script, "echo 'subject: OK'\n")
    outcome = updates.run(b"From: a@b\n\nbody\n", [], run_as=None, timeout=10)
    assert b"\nSubject: [OK]\n" in updates.tagged_message(b"From: a@b\n\nbody\n", outcome)


# ---- forged announcements: the xfilter's own early checks, and a timeout under sudo ----------
@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """get_ides.sh's state dir, here the test's own."""
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setattr(updates, "STATE_DIR", path)
    return path


def test_a_sender_outside_the_allowlist_is_skipped(state: Path) -> None:
    allow = ("*@lists.clamav.net", "virusdb@example.org")
    outcome = updates.skipped("evil@example.com", senders=allow, min_interval=0)
    assert outcome is not None and outcome.tag == "SKIPPED sender"
    assert b"evil@example.com is not in updates.senders" in outcome.stdout
    for sender in ("Announce@Lists.ClamAV.net", "virusdb@example.org"):
        assert updates.skipped(sender, senders=allow, min_interval=0) is None
    assert updates.skipped(None, senders=allow, min_interval=0) is not None  # unknown: no
    assert updates.skipped(None, senders=(), min_interval=0) is None  # no allowlist: any


def test_within_the_interval_of_the_script_s_stamp_is_skipped(state: Path) -> None:
    (state / "last").write_text("1700000000\n")
    outcome = updates.skipped(None, senders=(), min_interval=3600, now=1700000600)
    assert outcome is not None and outcome.tag == "SKIPPED interval"
    assert outcome.stdout.startswith(b"skipped: last update at 2023-11-14 22:13:20 UTC, 600 s")
    assert updates.skipped(None, senders=(), min_interval=3600, now=1700003601) is None
    (state / "last").unlink()
    assert updates.skipped(None, senders=(), min_interval=3600, now=1700000600) is None


def test_a_timeout_that_cannot_kill_root_s_script_still_returns(
    script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through sudo the script's process group is root's: killpg fails with EPERM (the fault is
    simulated here; tests/e2e/test_updates.py has the real sudo). The xfilter stops waiting,
    tags [TIMEOUT], and does not raise (an error exit makes maildrop redeliver)."""
    write(script, "exec sleep 30\n")

    def eperm(pgid: int, signum: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "killpg", eperm)
    started = time.monotonic()
    outcome = updates.run(ANNOUNCEMENT, [], run_as=None, timeout=1)
    assert time.monotonic() - started < 5
    assert outcome.tag == "TIMEOUT" and outcome.returncode is None
    assert b"stopped waiting" in outcome.stdout


def test_the_script_goes_with_how_avtool_was_installed() -> None:
    """The Debian package's avtool runs its own /usr/lib/avtool/get_ides.sh (its sudoers
    snippet names that); a checkout installed by share/install.sh the /usr/local one."""
    from pathlib import Path

    from avtool import updates

    packaged = Path("/usr/lib/avtool/python/avtool/updates.py")
    assert updates.script_for(packaged) == Path("/usr/lib/avtool/get_ides.sh")
    venv = Path("/opt/avtool/lib/python3.11/site-packages/avtool/updates.py")
    assert updates.script_for(venv) == Path("/usr/local/lib/avtool/get_ides.sh")
    assert Path("/usr/local/lib/avtool/get_ides.sh") == updates.SCRIPT  # this checkout
