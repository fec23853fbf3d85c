"""``avtool sig``: reload the running filter's config and/or virus DB, read its counters."""

from __future__ import annotations

import enum
import json
import sys
from typing import Annotated

import typer

from avtool import keys as K
from avtool.cli.common import ConfigFile, SetOption, load_config
from avtool.config import SYSTEM_CONFIG, Config, config_path
from avtool.errors import ConfigError


class Action(enum.StrEnum):
    reload = "reload"
    stats = "stats"
    status = "status"


class What(enum.StrEnum):
    config = "config"
    virus = "virus"


def paths_help() -> str:
    """The paths --help shows (avfilter_sig did): resolved as the daemon resolves them."""
    try:
        cfg = Config.resolve(role="daemon")
        conf = config_path(None, role="daemon", env={}) or f"{SYSTEM_CONFIG} (absent: defaults)"
        return f"Config file: {conf}. Pid file: {cfg[K.PID_FILE]}. Answers pipe: {cfg[K.PIPE]}."
    except Exception as e:  # noqa: BLE001 - help must show even with a broken config
        return f"(cannot resolve the paths: {e})"


def sig(
    action: Annotated[Action, typer.Argument(help="reload (default), stats or status.")] = (
        Action.reload
    ),
    what: Annotated[What | None, typer.Argument(help="With reload: config or virus.")] = None,
    pid: Annotated[
        int | None, typer.Option("-p", "--pid", help="Signal this pid; pipe ./avtool_sig.pipe.")
    ] = None,
    timeout: Annotated[
        float, typer.Option("-t", "--timeout", help="Seconds to wait for the answer.")
    ] = 90.0,
    syslog_: Annotated[
        bool, typer.Option("-l", "--syslog", help="Answer to syslog (mail), not stdout.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="stats: as JSON.")] = False,
    prom: Annotated[
        bool, typer.Option("--prometheus", help="stats: Prometheus text format.")
    ] = False,
    config_file: ConfigFile = None,
    set_: SetOption = None,
) -> None:
    """Signal the running filter and print its answer.

    reload: both (SIGHUP); reload config (SIGUSR1); reload virus (SIGUSR2). stats: the
    daemon's counters. status: running or not. Exit: 0 ok, 1 the daemon reported an error,
    2 usage, 3 not running, 4 another request in progress, 5 no answer in time.
    """
    from avtool import sigclient

    try:
        cfg = load_config(config_file, set_, role="daemon")
    except ConfigError as e:
        # The daemon keeps its old config and will list these errors itself when asked to
        # reload: only the pid file and pipe are needed here, so fall back to their defaults.
        print(f"avtool: warning: config has {len(e.problems)} error(s); default paths used",
              file=sys.stderr)  # fmt: skip
        cfg = Config.defaults()
    if what is not None and action is not Action.reload:
        raise typer.BadParameter(f"{what} goes with reload only")
    where = sigclient.target(cfg, pid)
    warnings: list[str] = []
    key = ("stats", None) if action is not Action.reload else ("reload", what and str(what))
    try:
        answer = sigclient.request(where, sigclient.SIGNALS[key], timeout, warnings)
    finally:
        for w in warnings:
            print(f"avtool: warning: {w}", file=sys.stderr)
    if action is Action.reload:
        _emit(answer.lines, syslog_, answer.ok)
        raise typer.Exit(0 if answer.ok else 1)
    stats = sigclient.parse_stats(answer.lines)
    if action is Action.status:
        typer.echo(
            f"running: pid {where.pid}, up {stats.get('uptime_s')} s, socket {stats.get('socket')}"
        )
    elif as_json:
        typer.echo(json.dumps(stats, indent=1))
    elif prom:
        typer.echo(sigclient.prometheus(stats), nl=False)
    else:
        _stats_table(stats)


def _emit(lines: list[str], to_syslog: bool, ok: bool) -> None:
    if not to_syslog:
        for line in lines:
            typer.echo(line)
        return
    import syslog

    syslog.openlog("avtool-sig", 0, syslog.LOG_MAIL)
    for line in lines:
        syslog.syslog(syslog.LOG_INFO if ok else syslog.LOG_ERR, line)
    syslog.closelog()


def _stats_table(stats: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="avtool counters")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name, value in stats.items():
        if name != "clamd":
            table.add_row(name, "-" if value is None else str(value))
    console = Console()
    console.print(table)
    clamds = stats.get("clamd") or []
    assert isinstance(clamds, list)  # noqa: S101 - parse_stats makes it a list
    for c in clamds:
        console.print(
            f"clamd {c['address']}: reachable {c.get('reachable')}, scans {c.get('scans')}, "
            f"errors {c.get('errors')}, database {c.get('db')}",
            highlight=False,
        )
