"""share/get_ides.sh: progress on stdout, '#' problems on stderr, a final subject line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "share" / "get_ides.sh"


def run(tmp_path: Path, conf: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conf").write_text(conf)
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
