"""``avtool config`` as a user sees it: TOML when piped, a table on request, errors as lines."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avtool import __version__
from avtool.cli.app import app, main
from avtool.config import Config
from avtool.config import keys as K

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"avtool {__version__}"


def test_piped_output_is_a_valid_config(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "--set", "log.verbosity=2"])
    assert result.exit_code == 0, result.output
    data = tomllib.loads(result.output)
    assert data["log"]["verbosity"] == 2
    assert "from command line" in result.output
    saved = tmp_path / "saved.conf"
    saved.write_text(result.output)
    assert Config.resolve(saved, env={})[K.VERBOSITY] == 2


def test_table_shows_value_type_default_source(tmp_path: Path) -> None:
    path = tmp_path / "a.conf"
    path.write_text("[clamd]\nscan_timeout = 9\n")
    result = runner.invoke(
        app, ["config", "-f", str(path), "--format", "table"], env={"COLUMNS": "220"}
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "clamd.scan_timeout" in line)
    assert "9.0" in row and "seconds" in row and "120.0" in row
    assert f"{path}:2" in row


def test_config_errors_one_line_each_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.conf"
    path.write_text('[clamd]\ntransfer = "x"\nbackends = 3\n[log]\nverbose = 1\n')
    with pytest.raises(SystemExit) as exit_:
        main(["config", "-f", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith("avtool: config error: ") for line in lines)
    assert "log.verbose: unknown key; did you mean log.verbosity?" in err
    assert "Traceback" not in err


def test_missing_explicit_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["config", "-f", str(tmp_path / "absent.conf")])
    assert exit_.value.code == 2
    assert "no such config file" in capsys.readouterr().err


def test_bad_set_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["config", "--set", "log.verbosity"])
    assert exit_.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_root_debug_shows_the_error_and_serve_debug_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`avtool --debug CMD` lets the error through (a traceback); `serve --debug` is serve's
    foreground mode and a file named --debug is a file: both get the one line."""
    from avtool.errors import UsageError

    absent = str(tmp_path / "absent.conf")
    with pytest.raises(UsageError):
        main(["--debug", "config", "-f", absent])
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--debug", "-f", absent])
    assert exit_.value.code == 2
    assert "avtool: " in capsys.readouterr().err
