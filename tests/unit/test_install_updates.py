"""The update script's path is one fact in four places: avtool, its installer, sudoers, docs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from avtool.updates import SCRIPT, STATE_DIR

SHARE = Path(__file__).resolve().parents[2] / "share"


def test_the_installer_and_the_drop_in_name_avtool_s_script() -> None:
    installer = (SHARE / "install-updates.sh").read_text()
    assert re.search(rf"^script={re.escape(str(SCRIPT))}\s", installer, re.M)
    rule = (SHARE / "sudoers.avtool-get-ides").read_text().splitlines()[-1]
    assert rule == f'AVTOOL_UPDATERS ALL = (root) NOPASSWD: {SCRIPT} "", {SCRIPT} new'
    assert f"Install: root-owned, mode 0755, as {SCRIPT}" in (SHARE / "get_ides.sh").read_text()
    assert re.search(rf"^state={re.escape(str(STATE_DIR))}\s", installer, re.M)
    assert f"\nSTATE_DIR={STATE_DIR}\n" in (SHARE / "get_ides.sh").read_text()


def test_under_sudo_the_caller_cannot_choose_the_settings_file(tmp_path: Path) -> None:
    """A settings file is shell code that root runs: through sudo, only /etc/avtool's counts."""
    evil = tmp_path / "conf"
    marker = tmp_path / "ran"
    evil.write_text(f"touch {marker}\nUPDATE_COMMAND=true\nCHECK_COMMAND=true\n")
    env = {"PATH": os.environ["PATH"], "AVTOOL_GET_IDES_CONF": str(evil), "SUDO_UID": "1000"}
    _first_step(env)
    assert not marker.exists()
    env.pop("SUDO_UID")
    _first_step(env)
    assert marker.exists()  # the same call, run by root itself, reads it


def _first_step(env: dict[str, str]) -> None:
    """Run get_ides.sh until it says which settings it read, then stop it while it still
    reads the message (our stdin, kept open): before it takes the system's lock and stamp, or
    starts a real freshclam (slow when offline)."""
    with subprocess.Popen(
        ["sh", str(SHARE / "get_ides.sh")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"== settings: ")
        os.killpg(proc.pid, signal.SIGKILL)
