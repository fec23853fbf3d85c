"""share/daily-check, the daily job of both installs, with a stand-in avtool: it purges and sends
the digest as courier, runs the doctor only while the filter is enabled, says nothing when all
went well, and prints each failed step (cron mails it) with exit 1."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "share" / "daily-check"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not any(p.pw_name == "courier" for p in pwd.getpwall()),
    reason="runs steps as user courier: needs root and the user",
)


def run(tmp: Path, avtool_body: str, enabled: bool) -> subprocess.CompletedProcess[str]:
    """The script with its avtool and the filter's active link moved into ``tmp``."""
    avtool = tmp / "avtool"
    avtool.write_text(f'#!/bin/sh\necho "$(id -un) $*" >> {tmp}/calls\n{avtool_body}\n')
    avtool.chmod(0o755)
    active = tmp / "active"
    if enabled:
        active.touch()
    text = SCRIPT.read_text()
    assert "AVTOOL=/usr/local/bin/avtool\n" in text and "/etc/courier/filters/active/avtool" in text
    text = text.replace("AVTOOL=/usr/local/bin/avtool", f"AVTOOL={avtool}")
    text = text.replace("/etc/courier/filters/active/avtool", str(active))
    script = tmp / "daily-check"
    script.write_text(text)
    script.chmod(0o755)
    return subprocess.run([str(script)], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="avdaily", dir="/tmp"))
    d.chmod(0o777)  # courier appends to calls
    (d / "calls").touch()
    (d / "calls").chmod(0o666)
    yield d
    shutil.rmtree(d)


def test_all_well_says_nothing_and_runs_the_quarantine_steps_as_courier(tmp: Path) -> None:
    done = run(tmp, 'echo "purged 0 message(s)"', enabled=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert (tmp / "calls").read_text().splitlines() == [
        "courier quarantine purge",
        "courier quarantine digest --scheduled",
        "root config --check --daemon --format table",
    ]


def test_not_enabled_no_doctor_but_expiry_still(tmp: Path) -> None:
    done = run(tmp, "true", enabled=False)
    assert (done.returncode, done.stdout) == (0, "")
    assert "config --check" not in (tmp / "calls").read_text()
    assert "quarantine purge" in (tmp / "calls").read_text()


def test_a_failed_step_is_reported_and_the_others_still_run(tmp: Path) -> None:
    body = 'case "$*" in "quarantine purge") echo "avtool: /q: permission denied"; exit 2;; esac'
    done = run(tmp, body, enabled=True)
    assert done.returncode == 1
    assert "the daily check of the Courier filter failed on" in done.stdout
    assert "== avtool quarantine purge (policy.quarantine_days)\navtool: /q: permission" in (
        done.stdout
    )
    assert "digest" not in done.stdout.split("permission denied", 1)[1]  # only failed steps
    assert len((tmp / "calls").read_text().splitlines()) == 3


def test_the_retro_scan_is_left_to_the_hourly_job(tmp: Path) -> None:
    """share/rescan-job.sh runs it when the signatures changed; a daily one would be a second
    run over every mailbox for nothing."""
    assert run(tmp, "", enabled=True).returncode == 0
    calls = (tmp / "calls").read_text()
    assert "quarantine purge" in calls and "rescan" not in calls
