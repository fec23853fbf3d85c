"""``avtool sig``: reload the running filter's config and/or virus DB, read its counters.

A typer group: ``sig reload [config|virus]``, ``sig stats [--json|--prometheus]``, ``sig
status``; ``sig`` alone reloads both, as avfilter_sig did and as scripts expect. The options may
come before the subcommand or after it (``avtool sig -l reload virus``: freshclam's
OnUpdateExecute); given in both places, the later one counts, as for one command.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from avtool.cli.common import ConfigFile, SetOption, load_config
from avtool.errors import ConfigError

if TYPE_CHECKING:
    from avtool.config import Config
    from avtool.control.wire import Response, Stats

SYSLOG_IDENT = "avtool-sig"
TIMEOUT_S = 90.0
_ASKED = "avtool.sig"  # the group's options, in ctx.meta for the subcommand


class Action(enum.StrEnum):
    reload = "reload"
    stats = "stats"
    status = "status"


class What(enum.StrEnum):
    config = "config"
    virus = "virus"


class _PathsEpilog:
    """Builds the epilog (the paths) only when the help is shown, not at every start."""

    epilog: str | None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.epilog = paths_help()
        super().format_help(ctx, formatter)  # type: ignore[misc]


class SigGroup(_PathsEpilog, TyperGroup):
    pass


class SigCommand(_PathsEpilog, TyperCommand):
    pass


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


# Each option once; the group and each subcommand that takes it declare it with these.
Pid = Annotated[
    int | None,
    typer.Option("-p", "--pid", min=1, help="Signal this pid; the pipe is ./avtool_sig.pipe."),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        "-t",
        "--timeout",
        min=0.1,
        help="Seconds to wait for the answer.",
        show_default=str(TIMEOUT_S),  # None here: a -t before the subcommand holds after it
    ),
]
Syslog = Annotated[
    bool, typer.Option("-l", "--syslog", help="reload: answer to syslog (mail), not stdout.")
]
Json = Annotated[bool, typer.Option("--json", help="stats: as JSON.")]
Prometheus = Annotated[bool, typer.Option("--prometheus", help="stats: Prometheus text format.")]


@dataclasses.dataclass(frozen=True)
class Asked:
    """The options of one ``sig`` run, from before and after the subcommand."""

    pid: int | None = None
    timeout: float | None = None
    to_syslog: bool = False
    as_json: bool = False
    prom: bool = False
    config_file: Path | None = None
    sets: tuple[str, ...] = ()

    def then(self, later: Asked) -> Asked:
        """These options followed by ``later``'s: a value given later replaces one given
        before, flags add up, ``--set``s accumulate (as for options of one command)."""
        return Asked(
            later.pid if later.pid is not None else self.pid,
            later.timeout if later.timeout is not None else self.timeout,
            self.to_syslog or later.to_syslog,
            self.as_json or later.as_json,
            self.prom or later.prom,
            later.config_file if later.config_file is not None else self.config_file,
            self.sets + later.sets,
        )


sig = typer.Typer(name="sig", cls=SigGroup, no_args_is_help=False)


@sig.callback(invoke_without_command=True)
def sig_group(
    ctx: typer.Context,
    pid: Pid = None,
    timeout: Timeout = None,
    to_syslog: Syslog = False,
    as_json: Json = False,
    prom: Prometheus = False,
    config_file: ConfigFile = None,
    set_: SetOption = None,
) -> None:
    """Tell the running filter to reload, and print its answer; or read its counters.

    reload: config and virus database (SIGHUP; also `avtool sig` alone); reload config
    (SIGUSR1): what changed, or every error (the running config stays); reload virus (SIGUSR2):
    each clamd reloads, database version before and after. stats: the daemon's counters
    (SIGURG) as a table, --json, or --prometheus for node_exporter's textfile collector.
    status: running or not, pid, uptime, socket.

    For freshclam.conf: OnUpdateExecute sudo -n -u courier /usr/local/bin/avtool sig -l reload
    virus (share/sudoers.avtool-sig).

    Run as root, sig signals only an `avtool serve` process running as the owner of the pid
    file (with -p: as the process's own user), and sends the signal as that user; anything
    else counts as not running.

    Exit status: 0 ok; 1 the daemon reported an error; 2 usage; 3 not running (or stale pid
    file, or, as root, the pid names no avtool serve of the pid file's owner); 4 another
    request is in progress; 5 no answer within the timeout.
    """
    asked = Asked(pid, timeout, to_syslog, as_json, prom, config_file, tuple(set_ or ()))
    ctx.meta[_ASKED] = asked
    if ctx.invoked_subcommand is None:
        run(Action.reload, None, asked)


@sig.command("reload", cls=SigCommand)
def reload(
    ctx: typer.Context,
    what: Annotated[What | None, typer.Argument(help="config or virus (default both).")] = None,
    pid: Pid = None,
    timeout: Timeout = None,
    to_syslog: Syslog = False,
    config_file: ConfigFile = None,
    set_: SetOption = None,
) -> None:
    """Reload the config and the virus database (SIGHUP), the config (SIGUSR1) or the virus
    database (SIGUSR2), and print the daemon's answer."""
    later = Asked(pid, timeout, to_syslog, config_file=config_file, sets=tuple(set_ or ()))
    run(Action.reload, what, _before(ctx).then(later))


@sig.command("stats", cls=SigCommand)
def stats(
    ctx: typer.Context,
    pid: Pid = None,
    timeout: Timeout = None,
    as_json: Json = False,
    prom: Prometheus = False,
    config_file: ConfigFile = None,
    set_: SetOption = None,
) -> None:
    """Print the daemon's counters (SIGURG): a table, --json, or --prometheus."""
    later = Asked(pid, timeout, False, as_json, prom, config_file, tuple(set_ or ()))
    run(Action.stats, None, _before(ctx).then(later))


@sig.command("status", cls=SigCommand)
def status(
    ctx: typer.Context,
    pid: Pid = None,
    timeout: Timeout = None,
    config_file: ConfigFile = None,
    set_: SetOption = None,
) -> None:
    """Say whether the filter runs: its pid, uptime and socket (SIGURG)."""
    later = Asked(pid, timeout, config_file=config_file, sets=tuple(set_ or ()))
    run(Action.status, None, _before(ctx).then(later))


def _before(ctx: typer.Context) -> Asked:
    asked = ctx.meta.get(_ASKED)
    return asked if isinstance(asked, Asked) else Asked()


def _check(action: Action, asked: Asked) -> None:
    """Options given before the subcommand that do not go with it: usage errors (exit 2)."""
    if (asked.as_json or asked.prom) and action is not Action.stats:
        raise typer.BadParameter("--json and --prometheus go with stats only")
    if asked.as_json and asked.prom:
        raise typer.BadParameter("--json or --prometheus, not both")
    if asked.to_syslog and action is not Action.reload:
        raise typer.BadParameter("-l goes with reload only")


def run(action: Action, what: What | None, asked: Asked) -> None:
    """One request: the signal, the answer printed (or to syslog), the exit status."""
    from avtool.control import client, wire
    from avtool.control.prometheus import prometheus, rescan_prometheus

    _check(action, asked)
    timeout = TIMEOUT_S if asked.timeout is None else asked.timeout
    signum = wire.STATS_SIGNAL
    if action is Action.reload:
        signum = wire.reload_signal(what.value if what else None)
    log = _Syslog() if asked.to_syslog else None
    warnings: list[str] = []
    cfg = _paths_config(asked.config_file, list(asked.sets))
    try:
        where = client.target(cfg, asked.pid)
        answer = client.request(where, signum, timeout, warnings)
    except wire.SigError as e:
        if log:
            log.error(str(e))  # main() prints it on stderr and exits with its code
        raise
    finally:
        for w in warnings:
            _warn(w, log)
    if action is Action.reload:
        _emit(answer, log)
    elif answer.end == "ok":
        counters = answer.stats()
        rescan = _last_rescan(cfg) if action is Action.stats else {}
        if action is Action.status:
            _status(where.pid, counters)
        elif asked.as_json:
            typer.echo(json.dumps({**counters.as_dict(), **rescan}, indent=1))
        elif asked.prom:
            typer.echo(prometheus(counters) + rescan_prometheus(rescan), nl=False)
        else:
            _stats_table(counters, rescan)
    if problem := answer.problem(where.pid, timeout):
        print(f"avtool: {problem}", file=sys.stderr)
        if log:
            log.error(problem)
    raise typer.Exit(answer.exit_code)


def _last_rescan(cfg: Config) -> dict[str, object]:
    """The time and findings of the last ``avtool rescan`` (its summary file, beside
    rescan.state); none when there was none or this user cannot read it."""
    from avtool.rescan import last

    facts = last.read(cfg) or {}
    return {key: facts[key] for key in last.SHOWN if key in facts}


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


def _emit(answer: Response, log: _Syslog | None) -> None:
    for line in answer.lines:
        if log is None:
            typer.echo(line)
        elif answer.end == "ok":
            log.info(line)
        else:
            log.error(line)


def _status(pid: int, stats: Stats) -> None:
    uptime = stats.counters.get("uptime_s")
    typer.echo(f"avtool is running: pid {stats.pid or pid}, up {uptime} s, socket {stats.socket}")


def _stats_table(stats: Stats, rescan: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"avtool counters (pid {stats.pid}, socket {stats.socket})")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name, value in stats.counters.items():
        shown = "-" if value is None else f"{value:.1f}" if isinstance(value, float) else value
        table.add_row(name, str(shown))
    for name, fact in rescan.items():
        table.add_row(name, str(fact))
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
