"""``avtool sig``: reload the running filter's config and/or virus DB, read its counters."""

from __future__ import annotations

import enum
import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from avtool.cli.common import ConfigFile, SetOption, load_config
from avtool.errors import ConfigError

if TYPE_CHECKING:
    from avtool.config import Config
    from avtool.control.client import Answer, Target
    from avtool.control.stats import Stats

SYSLOG_IDENT = "avtool-sig"


class Action(enum.StrEnum):
    reload = "reload"
    stats = "stats"
    status = "status"


class What(enum.StrEnum):
    config = "config"
    virus = "virus"


class SigCommand(TyperCommand):
    """Builds the epilog (the paths) only when the help is shown, not at every start."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.epilog = paths_help()
        super().format_help(ctx, formatter)


def paths_help() -> str:
    """The files `sig` uses, resolved as it resolves them (avfilter_sig --help showed them)."""
    from avtool.config import SYSTEM_CONFIG, Config
    from avtool.config import keys as K

    try:
        cfg = Config.resolve(role="daemon")
        conf = str(cfg.path) if cfg.path else f"{SYSTEM_CONFIG} (absent: built-in defaults)"
    except ConfigError as e:
        cfg = Config.defaults()
        conf = f"has {len(e.problems)} error(s): default paths shown"
    return (
        f"Config file: {conf}\n"
        f"Pid file: {cfg[K.PID_FILE]}\n"
        f"Answers pipe: {cfg[K.PIPE]} (with -p: ./avtool_sig.pipe)"
    )


def sig(
    action: Annotated[Action, typer.Argument(help="reload (the default), stats or status.")] = (
        Action.reload
    ),
    what: Annotated[
        What | None, typer.Argument(help="With reload: config or virus (default both).")
    ] = None,
    pid: Annotated[
        int | None,
        typer.Option("-p", "--pid", min=1, help="Signal this pid; the pipe is ./avtool_sig.pipe."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("-t", "--timeout", min=0.1, help="Seconds to wait for the answer."),
    ] = 90.0,
    to_syslog: Annotated[
        bool, typer.Option("-l", "--syslog", help="reload: answer to syslog (mail), not stdout.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="stats: as JSON.")] = False,
    prom: Annotated[
        bool, typer.Option("--prometheus", help="stats: Prometheus text format.")
    ] = False,
    config_file: ConfigFile = None,
    set_: SetOption = None,
) -> None:
    """Tell the running filter to reload, and print its answer; or read its counters.

    reload: config and virus database (SIGHUP); reload config (SIGUSR1): what changed, or every
    error (the running config stays); reload virus (SIGUSR2): each clamd reloads, database
    version before and after. stats: the daemon's counters (SIGURG) as a table, --json, or
    --prometheus for node_exporter's textfile collector. status: running or not, pid, uptime,
    socket.

    For freshclam.conf: OnUpdateExecute sudo -n -u courier /usr/local/bin/avtool sig -l reload
    virus (share/sudoers.avtool-sig).

    Run as root, sig signals only an `avtool serve` process running as the owner of the pid
    file (with -p: as the process's own user), and sends the signal as that user; anything
    else counts as not running.

    Exit status: 0 ok; 1 the daemon reported an error; 2 usage; 3 not running (or stale pid
    file, or, as root, the pid names no avtool serve of the pid file's owner); 4 another
    request is in progress; 5 no answer within the timeout.
    """
    from avtool.control import client as sigclient
    from avtool.control import stats as sigstats

    if what is not None and action is not Action.reload:
        raise typer.BadParameter(f"{what} goes with reload only", param_hint="what")
    if (as_json or prom) and action is not Action.stats:
        raise typer.BadParameter("--json and --prometheus go with stats only")
    if as_json and prom:
        raise typer.BadParameter("--json or --prometheus, not both")
    if to_syslog and action is not Action.reload:
        raise typer.BadParameter("-l goes with reload only")
    signum = sigclient.STATS_SIGNAL
    if action is Action.reload:
        signum = sigclient.RELOAD_SIGNALS[what.value if what else None]
    log = _Syslog() if to_syslog else None
    warnings: list[str] = []
    try:
        where = sigclient.target(_paths_config(config_file, set_), pid)
        answer = sigclient.request(where, signum, timeout, warnings)
    except sigclient.SigError as e:
        if log:
            log.error(str(e))  # main() prints it on stderr and exits with its code
        raise
    finally:
        for w in warnings:
            _warn(w, log)
    if action is Action.reload:
        _emit(answer, log)
    elif answer.end == "ok":
        stats = sigstats.parse_stats(answer.lines)
        if action is Action.status:
            _status(where, stats)
        elif as_json:
            typer.echo(json.dumps(stats.as_dict(), indent=1))
        elif prom:
            typer.echo(sigstats.prometheus(stats), nl=False)
        else:
            _stats_table(stats)
    if problem := answer.problem(where, timeout):
        print(f"avtool: {problem}", file=sys.stderr)
        if log:
            log.error(problem)
    raise typer.Exit(answer.exit_code)


def _paths_config(config_file: Any, set_: list[str] | None) -> Config:
    """The config, for the pid file and the pipe. A broken file is what `reload config` is for:
    the daemon lists its errors; here the default paths stand in."""
    try:
        return load_config(config_file, set_, role="daemon")
    except ConfigError as e:
        from avtool.config import Config

        print(
            f"avtool: warning: the config has {len(e.problems)} error(s); "
            "default pid file and pipe used",
            file=sys.stderr,
        )
        return Config.defaults()


class _Syslog:
    """-l: the answer to syslog, facility mail (freshclam's OnUpdateExecute has no terminal)."""

    def __init__(self) -> None:
        import syslog

        self.syslog = syslog
        syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_MAIL)

    def line(self, text: str, priority: int) -> None:
        self.syslog.syslog(priority, text)

    def info(self, text: str) -> None:
        self.line(text, self.syslog.LOG_INFO)

    def warning(self, text: str) -> None:
        self.line(text, self.syslog.LOG_WARNING)

    def error(self, text: str) -> None:
        self.line(text, self.syslog.LOG_ERR)


def _warn(text: str, log: _Syslog | None) -> None:
    print(f"avtool: warning: {text}", file=sys.stderr)
    if log:
        log.warning(text)


def _emit(answer: Answer, log: _Syslog | None) -> None:
    for line in answer.lines:
        if log is None:
            typer.echo(line)
        elif answer.end == "ok":
            log.info(line)
        else:
            log.error(line)


def _status(where: Target, stats: Stats) -> None:
    uptime = stats.counters.get("uptime_s")
    typer.echo(
        f"avtool is running: pid {stats.pid or where.pid}, up {uptime} s, socket {stats.socket}"
    )


def _stats_table(stats: Stats) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"avtool counters (pid {stats.pid}, socket {stats.socket})")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name, value in stats.counters.items():
        shown = "-" if value is None else f"{value:.1f}" if isinstance(value, float) else value
        table.add_row(name, str(shown))
    console.print(table)
    if stats.backends:
        backends = Table(title="clamd")
        columns = ("address", "reachable", "aside", "in flight", "scans", "errors", "database")
        for column in (*columns, "version"):
            backends.add_column(column)
        for b in stats.backends:
            backends.add_row(
                b.address,
                "yes" if b.reachable else "no",
                "yes" if b.aside else "no",
                str(b.in_flight),
                str(b.scans),
                str(b.errors),
                "-" if b.db is None else str(b.db),
                b.version or "-",
            )
        console.print(backends)
