"""Each config key says how a reload applies it; the registry is built from keys.py alone."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from avtool.cli.app import app
from avtool.config import Config, keys
from avtool.config.kinds import RELOADS, Int, Key, key, table
from avtool.engine import Engine


def test_every_key_declares_how_a_reload_applies_it() -> None:
    defined = [v for v in vars(keys).values() if isinstance(v, Key)]
    assert {k.name for k in defined} == set(keys.KEYS), "a key defined but missing from KEYS"
    assert len(keys.KEYS) == len(defined) > 30
    for k in keys.KEYS.values():
        assert k.reload in RELOADS, k.name


def test_a_key_without_a_known_reload_kind_or_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="reload must be one of live, engine, restart, log"):
        key("x.y", Int(), 1, "doc", reload="sometimes")  # type: ignore[arg-type]
    one = key("x.y", Int(), 1, "doc", reload="live")
    with pytest.raises(ValueError, match="x.y: defined twice"):
        table((one, one))


def test_engine_keys_are_exactly_those_the_engine_reads() -> None:
    """A key the Engine reads but marked live would never reach a running daemon."""
    read: set[str] = set()

    class Spy(Config):
        def __getitem__(self, k: Key[Any]) -> Any:
            read.add(k.name)
            return super().__getitem__(k)

    defaults = Config.defaults()
    Engine.from_config(Spy(defaults.values, defaults.sources))
    engine = {n for n, k in keys.KEYS.items() if k.reload == "engine"}
    assert read == engine


def test_restart_and_log_keys() -> None:
    """Used once at start (daemon/server.py): the sockets, pid file, pipe, slot and thread
    counts and whether to start without courierfilter; the log setup (logs.set_verbosity)."""
    by_kind = {how: {n for n, k in keys.KEYS.items() if k.reload == how} for how in RELOADS}
    assert by_kind["restart"] == {
        "serve.filter_dir",
        "serve.courier_dir",
        "serve.pid_file",
        "serve.pipe",
        "serve.max_scans",
        "serve.max_connections",
        "serve.manual_start",
    }
    assert by_kind["log"] == {"log.verbosity"}


def test_config_shows_the_reload_kind_of_each_key() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["config", "--format", "toml"])
    assert result.exit_code == 0, result.output
    assert "from default; reload: log\nverbosity = 1\n" in result.output
    assert "from default; reload: engine\nscan_timeout = 120.0\n" in result.output
    table_out = runner.invoke(app, ["config", "--format", "table"], env={"COLUMNS": "250"})
    row = next(line for line in table_out.output.splitlines() if "serve.pid_file" in line)
    assert "restart" in row
