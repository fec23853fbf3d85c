"""``avtool rescan``: options -> one rescan.runner.run() call, rendered as ``scan`` renders."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from avtool import logs
from avtool.cli.common import ConfigFile, SetOption, load_config
from avtool.cli.scan import JsonView, TextView
from avtool.rescan import actions as rescan_actions
from avtool.rescan import last
from avtool.rescan.runner import Options, RescanSummary, run
from avtool.scan.scanner import Summary

Roots = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ROOT",
        help="Mailboxes or directories (default: rescan.roots, else every user's ~/Maildir).",
        show_default=False,
    ),
]


def rescan(
    roots: Roots = None,
    config_file: ConfigFile = None,
    set_: SetOption = None,
    days: int | None = typer.Option(
        None, "--days", min=0, help="Mail delivered within N days (default: rescan.days; 0: all)."
    ),
    json_: bool = typer.Option(
        False, "--json", help="JSON lines: one object per message scanned, then a summary object."
    ),
    quarantine: bool = typer.Option(
        False, "--quarantine", help="Move infected messages into avtool's quarantine."
    ),
    notify: bool = typer.Option(
        False, "--notify", help="Send the postmaster a report of what was found."
    ),
    jobs: int | None = typer.Option(
        None, "-j", "--jobs", min=1, max=256, help="Messages scanned at once (as for scan)."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the findings: no summary."),
    if_changed: bool = typer.Option(
        False,
        "--if-changed",
        help="Only if clamd's signatures changed since the last complete rescan (else exit 0 "
        "at once, no mailbox read): for the hourly job.",
    ),
) -> None:
    """Scan delivered mail again with today's signatures, skipping what they already saw.

    Messages delivered within the window (--days) that were not scanned with the current
    signatures are scanned; a renamed or moved message is not scanned twice; a signature
    update makes every message new again. State: rescan.state (SQLite).

    --quarantine (or rescan.action = "quarantine") moves what is found into avtool's
    quarantine (`avtool quarantine release ID` puts it back where it was); --notify sends
    notify.postmaster one report of what was found and not reported yet (and each mailbox's
    owner theirs, with rescan.notify_owners).

    Bad input: one line each on stderr, and the run goes on.

    Exit status: 0 all clean, 1 a virus found, 2 errors (bad input, failed scans, no clamd).
    """
    cfg = load_config(config_file, set_)
    logs.setup(0, level=logging.ERROR)
    if if_changed and (same := last.nothing_new(cfg)) is not None:
        if not quiet:
            typer.echo(f"avtool rescan: no new signatures since the last rescan ({same})", err=True)
        raise typer.Exit(0)
    moving = rescan_actions.moving(cfg, quarantine)
    view: RescanText | RescanJson
    view = RescanJson() if json_ else RescanText(quiet=quiet)
    actions = rescan_actions.build(cfg, view, quarantine=moving, notify=notify)
    options = Options(days=days, jobs=jobs or 0)
    with view:
        summary = run(cfg, roots or [], view, options=options, actions=actions)
    view.finish(summary, moving=moving)
    raise typer.Exit(summary.exit_code)


class RescanText(TextView):
    """scan's lines; the summary table with what the state spared."""

    def __init__(self, *, quiet: bool) -> None:
        super().__init__(progress=False, quiet=quiet)

    TITLE = "avtool rescan"

    def rows(self, summary: Summary, *, moving: bool) -> list[tuple[str, str]]:
        assert isinstance(summary, RescanSummary)  # noqa: S101 - rescan's runner makes it
        rows = [
            ("scanned", f"{summary.scanned:,}"),
            ("skipped (scanned before)", f"{summary.skipped:,}"),
            ("outside the window", f"{summary.outside:,}"),
            ("infected", f"{summary.infected:,}"),
            ("unchecked", f"{summary.unchecked:,}"),
            ("failed", f"{summary.failed:,}"),
            ("errors", f"{summary.errors:,}"),
        ]
        if moving:
            rows.append(("moved", f"{summary.moved:,}"))
        return rows + [
            ("seconds", f"{summary.seconds:.2f}"),
            ("messages/s", f"{summary.rate:.1f}"),
            ("signatures", summary.signatures),
        ]


class RescanJson(JsonView):
    """scan's JSON lines; the summary object has rescan's counts too."""

    def finish(self, summary: Summary, *, moving: bool) -> None:
        if not isinstance(summary, RescanSummary):
            return
        self._emit(
            {
                "type": "summary",
                "scanned": summary.scanned,
                "skipped": summary.skipped,
                "outside_window": summary.outside,
                "clean": summary.clean,
                "infected": summary.infected,
                "unchecked": summary.unchecked,
                "failed": summary.failed,
                "errors": summary.errors,
                "notes": summary.notes,
                "moved": summary.moved,
                "bytes": summary.bytes,
                "seconds": round(summary.seconds, 3),
                "messages_per_second": round(summary.rate, 1),
                "jobs": summary.jobs,
                "signatures": summary.signatures,
                "state": summary.state,
                "exit": summary.exit_code,
            }
        )
        self.flush()
