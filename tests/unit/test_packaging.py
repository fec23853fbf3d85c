"""Packaging promises: one version everywhere, a changelog entry, completions that match the app."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

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


def test_completions_name_every_command_and_its_options() -> None:
    """Every subcommand of the app, in each shell's own syntax, with each of its options."""
    import typer.main

    group: Any = typer.main.get_command(app)
    scripts = render(app)
    bash, zsh, fish = (scripts[FILES[s]] for s in ("bash", "zsh", "fish"))
    names = sorted(group.commands)
    assert {"serve", "scan", "config", "sig", "batch-test", "run-get-ides"} <= set(names)
    assert f'compgen -W "{" ".join(names)} ' in bash
    for name in names:
        options = [o for p in group.commands[name].params for o in p.opts if o.startswith("-")]
        assert options or hasattr(group.commands[name], "commands"), name  # a group may have none
        line = re.search(rf"^    {re.escape(name)}\) opts=\"([^\"]*)\"", bash, re.M)
        assert line is not None, f"bash: no case for {name}"
        assert set(options) <= set(line.group(1).split()), name
        assert re.search(rf"'{re.escape(name)}:[^']*'", zsh), f"zsh: {name} not listed"
        assert f" -a {name} -d " in fish, f"fish: {name} not listed"
        for option in options:
            assert option.lstrip("-") in zsh and option.lstrip("-") in fish, (name, option)


@pytest.mark.parametrize(("shell", "name"), [("bash", "bash"), ("zsh", "zsh"), ("fish", "fish")])
def test_completion_scripts_parse(shell: str, name: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    path = ROOT / "completions" / FILES[name]
    subprocess.run([shell, "-n", str(path)], check=True)
