"""``avtool scan``: options -> one scanner.run() call; this module only renders its events."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import typer

from avtool import logs
from avtool.cli.common import ConfigFile, SetOption, load_config
from avtool.scan.mailbox import Moved, Problem
from avtool.scan.mailbox.maildir import flags_of
from avtool.scan.scanner import Options, Result, Summary, run

Paths = Annotated[
    list[str],
    typer.Argument(metavar="PATH...", help="Message files, mailboxes or directories; - for stdin."),
]
MoveTo = Annotated[
    Path | None,
    typer.Option(
        "--move-to",
        metavar="MAILDIR",
        file_okay=False,
        help="Move infected messages into this Maildir (created if missing), keeping flags.",
    ),
]
STYLES = {"infected": "bold red", "unchecked": "yellow", "failed": "magenta", "clean": "green"}


def scan(
    paths: Paths,
    config_file: ConfigFile = None,
    set_: SetOption = None,
    jobs: int | None = typer.Option(
        None,
        "-j",
        "--jobs",
        min=1,
        max=256,
        help="Messages scanned at once (default: scan.jobs, else clamd's threads, max 2 per CPU).",
    ),
    json_: bool = typer.Option(
        False, "--json", help="JSON lines: one object per message, then a summary object."
    ),
    explain: bool = typer.Option(
        False, "--explain", help="For each infected message, name the MIME part that carries it."
    ),
    move_to: MoveTo = None,
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="No progress bar and no summary: only the findings."
    ),
) -> None:
    """Scan mail files and mailboxes with clamd: which delivered messages are infected.

    PATH is a message file, Maildir, mbox, MH folder, or a directory to walk; - reads stdin.

    Prints one line per infected, unchecked or failed message, then a summary table.

    Bad input: one line each on stderr, and the scan goes on. Nothing changes without --move-to.

    Exit status: 0 all clean, 1 a virus found, 2 errors (bad input, failed scans, no clamd).
    """
    cfg = load_config(config_file, set_)
    logs.setup(0, level=logging.ERROR)  # clamd failures show up as failed messages
    view: TextView | JsonView
    if json_:
        view = JsonView()
    else:
        view = TextView(progress=not quiet and sys.stdout.isatty(), quiet=quiet)
    options = Options(
        jobs=jobs or 0,
        explain=explain,
        move_to=str(move_to) if move_to is not None else None,
        count=view.wants_total,
    )
    with view:
        summary = run(cfg, paths, view, options=options, stdin=sys.stdin.buffer)
    view.finish(summary, moving=move_to is not None)
    raise typer.Exit(summary.exit_code)


# ---- text on a terminal or a pipe ---------------------------------------------------------------
class TextView:
    """Finding lines on stdout, problems on stderr, a rich progress bar only on a terminal."""

    def __init__(self, *, progress: bool, quiet: bool) -> None:
        from rich.console import Console

        self.quiet = quiet
        # soft_wrap: one line per message whatever its length (rich wraps at 80 off a terminal).
        self.out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        # While the bar is drawn on the terminal, lines for that same terminal go through its
        # console (above the bar); a stderr redirected elsewhere is written to directly.
        self.err = (
            self.out
            if progress and _same_terminal()
            else Console(file=sys.stderr, highlight=False, soft_wrap=True)
        )
        self.progress = _progress_bar(self.out) if progress else None
        self.wants_total = progress
        self._task: Any = None
        self._done = 0
        self._total: int | None = None
        self._started = time.monotonic()

    def __enter__(self) -> TextView:
        if self.progress is not None:
            self.progress.start()
            self._task = self.progress.add_task("scan", total=None, messages="", rate="")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def total(self, messages: int, size: int) -> None:
        self._total = messages
        if self.progress is not None:
            self.progress.update(self._task, total=size)

    def result(self, result: Result) -> None:
        if self.progress is not None:
            self._done += 1
            elapsed = time.monotonic() - self._started
            of = f"/{self._total}" if self._total is not None else ""
            self.progress.update(
                self._task,
                advance=result.message.size,
                messages=f"{self._done}{of} messages",
                rate=f"{self._done / elapsed:.0f} msg/s" if elapsed > 0 else "",
            )
        if result.status != "clean":
            self.out.print(finding(result))
            for line in explanation(result):
                self.out.print(line)

    def problem(self, problem: Problem) -> None:
        from rich.text import Text

        label = ("error", "red") if problem.error else ("note", "yellow")
        self.err.print(
            Text.assemble("avtool: ", label, f": {problem.path}: {problem.text}"), soft_wrap=True
        )

    def moved(self, moved: Moved) -> None:
        from rich.text import Text

        self.out.print(
            Text.assemble(("MOVED    ", "cyan"), f" {moved.message.where} -> {moved.to}")
        )

    TITLE = "avtool scan"

    def rows(self, summary: Summary, *, moving: bool) -> list[tuple[str, str]]:
        """The summary table's rows; rescan's view gives its own."""
        rows = [
            ("scanned", f"{summary.scanned:,}"),
            ("clean", f"{summary.clean:,}"),
            ("infected", f"{summary.infected:,}"),
            ("unchecked", f"{summary.unchecked:,}"),
            ("failed", f"{summary.failed:,}"),
            ("errors", f"{summary.errors:,}"),
        ]
        if moving:
            rows.append(("moved", f"{summary.moved:,}"))
        return rows + [
            ("bytes", f"{summary.bytes:,} ({_human(summary.bytes)})"),
            ("seconds", f"{summary.seconds:.2f}"),
            ("messages/s", f"{summary.rate:.1f}"),
            ("parallel scans", str(summary.jobs)),
        ]

    def finish(self, summary: Summary, *, moving: bool) -> None:
        if self.quiet:
            return
        from rich.table import Table

        table = Table(title=self.TITLE, show_header=False)
        table.add_column("what")
        table.add_column("count", justify="right")
        for what, count in self.rows(summary, moving=moving):
            style = STYLES.get(what, "") if count != "0" else ""
            table.add_row(what, count, style=style if what != "clean" else "")
        self.out.print(table, soft_wrap=False)


def finding(result: Result) -> Any:
    """``INFECTED  mailbox [key]  names  From: ...  Subject: ...`` as a rich Text (plain on a
    pipe). Header text is data, never markup: a Subject of ``[red]`` stays as typed."""
    from rich.text import Text

    from avtool.engine import Infected

    v = result.verdict
    detail = " ".join(v.names) if isinstance(v, Infected) else getattr(v, "reason", "")
    parts: list[Any] = [
        (f"{result.status.upper():9}", STYLES[result.status]),
        f" {result.message.where}  ",
        (detail, "bold" if isinstance(v, Infected) else ""),
    ]
    if result.sender is not None:
        parts.append(f"  From: {result.sender}")
    if result.subject is not None:
        parts.append(f"  Subject: {result.subject}")
    return Text.assemble(*parts)


def explanation(result: Result) -> list[str]:
    if result.parts is None:
        return []
    if not result.parts:
        return ["          no single MIME part carries it: it matches the message as a whole"]
    lines = []
    for p in result.parts:
        name = f' "{p.filename}"' if p.filename else ""
        how = f" ({p.encoding})" if p.encoding else ""
        lines.append(f"          part {p.number} {p.content_type}{name}{how}: {' '.join(p.names)}")
    return lines


def _progress_bar(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.fields[messages]}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,  # the summary table follows; the bar is gone once the scan is done
        redirect_stdout=False,
        redirect_stderr=False,
    )


def _same_terminal() -> bool:
    try:
        return os.isatty(2) and os.fstat(1).st_rdev == os.fstat(2).st_rdev
    except OSError:
        return False


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


_json_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str


# ---- JSON lines for scripts ---------------------------------------------------------------------
class JsonView:
    """One JSON object per line on stdout: ``message``, ``error``/``note``, ``moved``, then
    ``summary``. Nothing else is written to stdout.

    Lines are written in batches of FLUSH_LINES, or with the first line once FLUSH_SECONDS
    have passed since the last write, and at the end, whatever the stream's own buffering:
    with PYTHONUNBUFFERED set, a write per message was one system call per message for a scan
    that keeps two cores busy (bench/rescan.py)."""

    wants_total = False
    FLUSH_LINES = 256
    FLUSH_SECONDS = 1.0

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._flushed = time.monotonic()

    def __enter__(self) -> JsonView:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()

    def _emit(self, obj: dict[str, object]) -> None:
        self._add(json.dumps(obj))

    def _add(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= self.FLUSH_LINES or time.monotonic() - self._flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            sys.stdout.write("\n".join(self._lines) + "\n")
            self._lines.clear()
        sys.stdout.flush()
        self._flushed = time.monotonic()

    def total(self, messages: int, size: int) -> None:
        pass  # not asked for (wants_total is False)

    def result(self, result: Result) -> None:
        self._add(clean_maildir_line(result) or json.dumps(message_object(result)))

    def problem(self, problem: Problem) -> None:
        kind = "error" if problem.error else "note"
        self._emit({"type": kind, "path": problem.path, "text": problem.text})

    def moved(self, moved: Moved) -> None:
        m = moved.message
        self._emit(
            {"type": "moved", "mailbox": m.mailbox, "key": m.key, "path": m.path, "to": moved.to}
        )

    def finish(self, summary: Summary, *, moving: bool) -> None:
        self._emit(
            {
                "type": "summary",
                "scanned": summary.scanned,
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
                "exit": summary.exit_code,
            }
        )
        self.flush()


def clean_maildir_line(result: Result) -> str | None:
    """``json.dumps(message_object(result))`` for the commonest line (a clean Maildir message,
    no From or Subject asked for), made without the dict (1.0 against 5.5 us); None for any
    other result."""
    m = result.message
    if m.format != "maildir" or result.status != "clean":
        return None
    if result.sender is not None or result.subject is not None:
        return None
    return (
        f'{{"type": "message", "status": "clean", "mailbox": {_json_str(m.mailbox)}, '
        f'"format": "maildir", "key": {_json_str(m.key)}, "path": {_json_str(m.path)}, '
        f'"size": {int(m.size)}, "subdir": {_json_str(m.subdir)}, '
        f'"flags": {_json_str(flags_of(m.info))}}}'
    )


def message_object(result: Result) -> dict[str, object]:
    from avtool.engine import Infected

    m, v = result.message, result.verdict
    obj: dict[str, object] = {
        "type": "message",
        "status": result.status,
        "mailbox": m.mailbox,
        "format": m.format,
        "key": m.key,
        "path": m.path,
        "size": m.size,
    }
    if m.format == "mbox":
        obj["offset"] = m.offset
    if m.format == "maildir":
        obj["subdir"] = m.subdir
        obj["flags"] = flags_of(m.info)
    if isinstance(v, Infected):
        obj["names"] = list(v.names)
    elif result.status != "clean":
        obj["reason"] = getattr(v, "reason", "")
    if result.sender is not None:
        obj["from"] = result.sender
    if result.subject is not None:
        obj["subject"] = result.subject
    if result.parts is not None:
        obj["parts"] = [
            {
                "part": p.number,
                "content_type": p.content_type,
                "filename": p.filename,
                "encoding": p.encoding or None,
                "names": list(p.names),
            }
            for p in result.parts
        ]
    return obj
