"""Config core: precedence, sources, validation (every problem at once), TOML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from avtool import config as C
from avtool.config import Config, Source
from avtool.config import keys as K
from avtool.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "avtool.conf"
    path.write_text(text)
    return path


def test_defaults_have_default_source() -> None:
    cfg = Config.resolve(env={}, role="daemon")
    for k, value, source in cfg.items():
        assert value == k.default
        assert source == Source("default")
    assert cfg[K.TRANSFER] == "auto"
    assert cfg[K.MAX_SIZE] == 25 << 20


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[clamd]\nscan_timeout = 10\nconnect_timeout = 1\n\n[log]\nverbosity = 2\n"
    )
    env = {"AVTOOL_CLAMD_SCAN_TIMEOUT": "20", "AVTOOL_LOG_VERBOSITY": "3"}
    cfg = Config.resolve(path, env=env, overrides={"log.verbosity": "0"})
    assert cfg[K.CONNECT_TIMEOUT] == 1.0
    assert str(cfg.source(K.CONNECT_TIMEOUT)) == f"{path}:3"
    assert cfg[K.SCAN_TIMEOUT] == 20.0
    assert str(cfg.source(K.SCAN_TIMEOUT)) == "AVTOOL_CLAMD_SCAN_TIMEOUT"
    assert cfg[K.VERBOSITY] == 0
    assert cfg.source(K.VERBOSITY).kind == "cli"


def test_three_mistakes_three_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[clamd]\n"
        'backends = ["relative.sock"]\n'  # line 2: not absolute
        "scan_timout = 3\n"  # line 3: typo
        "\n[scan]\n"
        'max_size = "lots"\n',  # line 6: wrong type
    )
    with pytest.raises(ConfigError) as err:
        Config.resolve(path, env={})
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("clamd.backends: item 1: must be an absolute unix socket path")
    assert problems[0].endswith(f"({path}:2)")
    assert "did you mean clamd.scan_timeout?" in problems[1] and f"{path}:3" in problems[1]
    assert problems[2].startswith("scan.max_size: must be a size") and f"{path}:6" in problems[2]


def test_out_of_range_and_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nverbosity = 9\n[clamav]\nx = 1\n")
    with pytest.raises(ConfigError) as err:
        Config.resolve(path, env={})
    assert err.value.problems[0] == f"log.verbosity: must be <= 3 ({path}:2)"
    assert err.value.problems[1].startswith("clamav: unknown key")


def test_contradicting_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[clamd]\nbackends = ["/run/clamd.sock", "10.0.0.5:3310"]\ntransfer = "fildes"\n'
        "connect_timeout = 30\nscan_timeout = 5\n",
    )
    with pytest.raises(ConfigError) as err:
        Config.resolve(path, env={})
    text = "\n".join(err.value.problems)
    assert "fildes works on unix sockets only" in text and "10.0.0.5:3310" in text
    assert "clamd.connect_timeout: 30 s is longer than clamd.scan_timeout 5 s" in text


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[clamd]\nbackends = [\n\nscan_timeout = \n")
    with pytest.raises(ConfigError) as err:
        Config.resolve(path, env={})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{path}:")
    assert "TOML syntax error" in err.value.problems[0]


def test_sizes_and_lists_from_text() -> None:
    cfg = Config.resolve(
        env={"AVTOOL_SCAN_MAX_SIZE": "10M", "AVTOOL_CLAMD_BACKENDS": "/a.sock, 127.0.0.1:3310"}
    )
    assert cfg[K.MAX_SIZE] == 10 << 20
    assert cfg[K.BACKENDS] == ("/a.sock", "127.0.0.1:3310")


def test_bad_env_and_cli_values_reported_with_source() -> None:
    with pytest.raises(ConfigError) as err:
        Config.resolve(
            env={"AVTOOL_CLAMD_TRANSFER": "carrier-pigeon"},
            overrides={"clamd.balance": "random", "nope": "1"},
        )
    problems = err.value.problems
    assert problems[0].startswith("clamd.transfer: must be one of auto, fildes, instream, scan")
    assert problems[0].endswith("(AVTOOL_CLAMD_TRANSFER)")
    assert problems[1].endswith("(command line)")
    assert problems[2].startswith("nope: unknown key")


def test_file_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path, "[log]\nverbosity = 2\n")
    other = tmp_path / "other.conf"
    other.write_text("[log]\nverbosity = 3\n")
    env = {"AVTOOL_CONFIG": str(other)}
    assert Config.resolve(explicit, env=env)[K.VERBOSITY] == 2
    assert Config.resolve(env=env)[K.VERBOSITY] == 3
    user = tmp_path / "user" / "avtool.conf"
    user.parent.mkdir()
    user.write_text("[log]\nverbosity = 0\n")
    monkeypatch.setattr(C, "user_config_path", lambda: user)
    monkeypatch.setattr(C, "SYSTEM_CONFIG", other)
    assert Config.resolve(env={}, role="user")[K.VERBOSITY] == 0
    assert Config.resolve(env={}, role="daemon")[K.VERBOSITY] == 3  # daemons skip user files


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = Config.resolve(
        env={}, overrides={"clamd.backends": "/x.sock,h:1", "scan.max_size": "3000"}
    )
    again = Config.resolve(write(tmp_path, cfg.to_toml()), env={})
    assert again.values == cfg.values


def test_changes_lists_only_differences() -> None:
    a = Config.resolve(env={})
    b = Config.resolve(env={}, overrides={"log.verbosity": "3"})
    assert a.changes(b) == ["log.verbosity: 1 -> 3"]
    assert a.changes(a) == []


def test_shipped_sample_is_current_and_resolves_to_defaults() -> None:
    shipped = Path(__file__).resolve().parents[2] / "share" / "avtool.conf"
    assert shipped.read_text() == Config.sample(), "regenerate: avtool config --sample"
    cfg = Config.resolve(shipped, env={})
    assert all(source.kind == "default" for _, _, source in cfg.items())
    for key, _, _ in cfg.items():
        assert f"#{key.name.split('.', 1)[1]} = " in shipped.read_text()


def test_no_test_reads_this_machines_config() -> None:
    """tests/conftest.py isolates every test (the machine may have share/install.sh's file)."""
    assert Config.resolve(role="daemon").path is None
    assert Config.resolve(role="user").path is None
