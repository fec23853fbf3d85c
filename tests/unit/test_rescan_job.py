"""Issue 18: the hourly job that rescans delivered mail when clamd's signatures changed
(share/rescan-job.sh), and how the installer and the Debian package ship it. Whether ``avtool
rescan --if-changed`` reads no mailbox while the signatures stay the same is checked against a
real clamd in tests/integration/test_rescan_act.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "share" / "rescan-job.sh"


def job(
    tmp_path: Path, rc: int, *, enabled: bool = True, keep_stub: bool = False
) -> subprocess.CompletedProcess[str]:
    """The job, as root's cron runs it, with a stand-in avtool that records its arguments."""
    stub = tmp_path / "avtool"
    if not keep_stub:
        stub.write_text(
            f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\necho "found: a line"\nexit {rc}\n'
        )
    stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "AVTOOL_RESCAN_AVTOOL": str(stub)}
    if enabled:
        env["AVTOOL_RESCAN_ALWAYS"] = "1"
    return subprocess.run(
        ["sh", str(JOB)], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("rc", [0, 1])
def test_the_job_asks_for_a_rescan_only_if_the_signatures_changed_and_is_silent(
    tmp_path: Path, rc: int
) -> None:
    """Clean or something found (the postmaster's report says what): no mail to root."""
    result = job(tmp_path, rc)
    assert calls(tmp_path) == ["rescan --if-changed --notify --quiet"]
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_failed_rescan_is_mailed_to_root(tmp_path: Path) -> None:
    result = job(tmp_path, 2)
    assert result.returncode == 1
    assert "the hourly rescan of delivered mail failed on" in result.stdout
    assert "(exit 2)" in result.stdout and "found: a line" in result.stdout


def test_a_rescan_already_running_is_no_failure(tmp_path: Path) -> None:
    """get_ides.sh's rescan holds the state's lock: the hourly one steps aside silently."""
    stub = tmp_path / "avtool"
    stub.write_text(
        "#!/bin/sh\necho 'avtool: another avtool rescan is using /var/lib/x; not run' >&2\nexit 2\n"
    )
    result = job(tmp_path, 2, keep_stub=True)
    assert (result.returncode, result.stdout) == (0, "")


def test_nothing_runs_while_the_filter_is_not_enabled(tmp_path: Path) -> None:
    if Path("/etc/courier/filters/active/avtool").exists():
        pytest.skip("the filter is enabled on this machine")
    result = job(tmp_path, 0, enabled=False)
    assert (result.returncode, calls(tmp_path)) == (0, [])


def test_the_installer_puts_the_job_the_cron_line_and_the_units_with_its_paths(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "share" / "install-rescan.sh")],
        env={"PATH": os.environ["PATH"], "AVTOOL_ROOT": str(tmp_path)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "usr/local/lib/avtool/rescan-job"
    assert installed.read_bytes() == JOB.read_bytes() and installed.stat().st_mode & 0o777 == 0o755
    # not /etc/cron.d/avtool-rescan: the package's conffile (dpkg would stop at its prompt)
    assert not (tmp_path / "etc/cron.d/avtool-rescan").exists()
    cron = (tmp_path / "etc/cron.d/avtool-local-rescan").read_text()
    assert "root [ -d /run/systemd/system ] || [ -x /usr/lib/avtool/rescan-job ] || " in cron
    assert cron.rstrip().endswith("|| /usr/local/lib/avtool/rescan-job")
    assert "MAILTO=root" in cron


def test_the_package_ships_the_same_job_hourly() -> None:
    rules = (REPO / "debian" / "rules").read_text()
    assert "sed $(PATHS) share/rescan-job.sh > $(DEST)$(LIB)/rescan-job" in rules
    assert "dh_installsystemd --name=avtool-rescan avtool-rescan.timer" in rules
    assert "dh_installcron --name=avtool-rescan" in rules
    timer = (REPO / "debian" / "avtool.avtool-rescan.timer").read_text()
    assert "OnCalendar=hourly" in timer and "WantedBy=timers.target" in timer
    service = (REPO / "debian" / "avtool.avtool-rescan.service").read_text()
    assert "ExecStart=/usr/lib/avtool/rescan-job" in service
    cron = (REPO / "debian" / "avtool.avtool-rescan.cron.d").read_text()
    assert " root " in cron and "/usr/lib/avtool/rescan-job" in cron
    assert "AVTOOL=/usr/local/bin/avtool" in JOB.read_text()  # rules' PATHS: /usr/bin/avtool
