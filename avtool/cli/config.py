"""``avtool config``: the effective configuration, where each value came from, and a doctor."""

from __future__ import annotations

import logging

import typer

from avtool import doctor, logs
from avtool.cli.common import ConfigFile, Fmt, Format, SetOption, load_config, want_table
from avtool.config import Config


def config(
    config_file: ConfigFile = None,
    set_: SetOption = None,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also ask each clamd about itself."
    ),
    check: bool = typer.Option(False, "--check", help="Run the doctor: exit 0 if all checks pass."),
    daemon: bool = typer.Option(False, "--daemon", help="Resolve as `avtool serve` does."),
    sample: bool = typer.Option(False, "--sample", help="Print a commented sample config file."),
    fmt: Format = Fmt.auto,
) -> None:
    """Show every key with its value, type, default and source; or check the setup (--check)."""
    if sample:
        typer.echo(Config.sample(), nl=False)
        return
    cfg = load_config(config_file, set_, role="daemon" if daemon else "user")
    logs.setup(0, level=logging.ERROR)  # the doctor reports clamd failures itself
    table = want_table(fmt)
    if check:
        findings = doctor.run(cfg)
        _print_findings(findings, table)
        raise typer.Exit(0 if doctor.passed(findings) else 1)
    if table:
        _print_table(cfg, verbose)
    else:
        typer.echo(_as_toml(cfg, verbose), nl=False)


def _as_toml(cfg: Config, verbose: bool) -> str:
    lines = [f"# avtool configuration; file: {cfg.path or 'none (defaults)'}"]
    lines += [f"# note: {note}" for note in cfg.notes]
    text = "\n".join(lines) + "\n\n" + cfg.to_toml(sources=True)
    if verbose:
        text += "\n" + "".join(f"# {line}\n" for line in _engine_facts(cfg))
    return text


def _engine_facts(cfg: Config) -> list[str]:
    from avtool.engine import Engine

    facts = []
    for backend in Engine.from_config(cfg).backends:
        info = backend.describe()
        if not info.reachable:
            facts.append(f"clamd {info.address}: unreachable: {info.error}")
            continue
        db = f"database {info.db_version}" if info.db_version is not None else "database unknown"
        if info.db_date:
            db += f" of {info.db_date}"
        facts.append(f"clamd {info.address}: {info.version}; {db}")
    return facts


def _print_table(cfg: Config, verbose: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"avtool configuration ({cfg.path or 'defaults only'})")
    for column in ("key", "value", "type", "default", "source", "reload"):
        table.add_column(column, overflow="fold")
    for k, value, source in cfg.items():
        changed = "bold" if source.kind != "default" else ""
        table.add_row(
            k.name,
            f"[{changed}]{k.kind.describe(value)}[/]" if changed else k.kind.describe(value),
            k.kind.label,
            k.kind.describe(k.default),
            str(source),
            k.reload,
        )
    console = Console()
    console.print(table)
    for note in cfg.notes:
        console.print(f"note: {note}")
    if verbose:
        for line in _engine_facts(cfg):
            console.print(line, highlight=False)


def _print_findings(findings: list[doctor.Finding], table: bool) -> None:
    marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    if table:
        from rich.console import Console

        console = Console(highlight=False)
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        for f in findings:
            console.print(f"[{colours[f.status]}]{marks[f.status]}[/] {f.what}")
            if f.fix and f.status != "ok":
                console.print(f"      fix: {f.fix}")
        return
    for f in findings:
        typer.echo(f"{marks[f.status]} {f.what}")
        if f.fix and f.status != "ok":
            typer.echo(f"      fix: {f.fix}")
