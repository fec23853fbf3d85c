"""Packaging promises: one version everywhere, a changelog entry, completions that match the app."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from avtool import __version__
from avtool.cli.app import app
from avtool.cli.completions import FILES, render

ROOT = Path(__file__).resolve().parents[2]


def test_changelog_has_the_current_version() -> None:
    """A development version's changes sit under [Unreleased]; a release has its own heading."""
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[Unreleased\]$", text, re.M)
    if ".dev" not in __version__:
        assert re.search(rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d\d-\d\d$", text, re.M)
    else:
        unreleased = text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
        assert "### Added" in unreleased


def test_pyproject_takes_version_from_package() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["dynamic"] == ["version"]
    assert data["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "avtool.__version__"
    assert data["project"]["scripts"]["avtool"] == "avtool.cli.app:main"


def test_completions_are_current() -> None:
    """Fails when a command or option changed without `python -m avtool.cli.completions`."""
    for name, text in render(app).items():
        on_disk = (ROOT / "completions" / name).read_text()
        assert on_disk == text, f"completions/{name} is stale: regenerate it"


def test_completions_name_every_command() -> None:
    bash = render(app)[FILES["bash"]]
    for command in ("config",):
        assert command in bash
    assert "--config-file" in bash and "--check" in bash


@pytest.mark.parametrize(("shell", "name"), [("bash", "bash"), ("zsh", "zsh"), ("fish", "fish")])
def test_completion_scripts_parse(shell: str, name: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    path = ROOT / "completions" / FILES[name]
    subprocess.run([shell, "-n", str(path)], check=True)
