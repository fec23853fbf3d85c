"""Options shared by several subcommands, and turning them into one resolved Config."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from avtool.config import Config, Role
from avtool.errors import UsageError

ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "-f",
        "--config-file",
        help="Config file to read (default: $AVTOOL_CONFIG, then the usual places).",
        dir_okay=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override one key, e.g. log.verbosity=2."),
]


class Fmt(enum.StrEnum):
    auto = "auto"
    table = "table"
    toml = "toml"


Format = Annotated[
    Fmt,
    typer.Option("--format", help="auto: a table on a terminal, TOML when piped."),
]


def parse_sets(sets: list[str] | None) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for item in sets or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        overrides[name.strip()] = value.strip()
    return overrides


def load_config(path: Path | None, sets: list[str] | None, role: Role = "user") -> Config:
    """Resolve the Config once for a command: file, environment, then ``--set`` overrides."""
    overrides = parse_sets(sets)
    if path is not None and not path.exists():
        raise UsageError(f"{path}: no such config file")
    return Config.resolve(path, role=role, overrides=overrides)


def want_table(fmt: Fmt) -> bool:
    return fmt is Fmt.table or (fmt is Fmt.auto and sys.stdout.isatty())
