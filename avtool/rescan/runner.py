"""The rescan behind ``avtool rescan``: the mailboxes' messages in the window that the state
does not know as scanned with today's signatures, scanned as ``avtool scan`` scans them
(scan/scanner.py: its walk, its worker pool, its verdicts), each result recorded.

Nothing here prints: events go to a scanner.Report on the calling thread, as for ``scan``.
What is done with an infected message besides reporting it (``--quarantine``, ``--notify``)
plugs in through Actions; ``infected`` is called only once the finding is committed, so an
action that moves the message can never lose the record of it.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from avtool.config import Config
from avtool.config import keys as K
from avtool.engine import Engine, Infected
from avtool.rescan import identity, roots, window
from avtool.rescan.state import MboxRow, State
from avtool.scan.driver import scan_all
from avtool.scan.mailbox import Message, Problem
from avtool.scan.mailbox.walk import walk
from avtool.scan.scanner import Report, Summary, default_jobs, preflight
from avtool.scan.worker import Options as ScanOptions
from avtool.scan.worker import Result, Worker

FROM_LINE_MAX = 1024  # bytes of a From_ line read for its date and check


@dataclass
class RescanSummary(Summary):
    """scan's counts, and what the state spared: ``skipped`` (scanned before with these
    signatures), ``outside`` (delivered before the window)."""

    skipped: int = 0
    outside: int = 0
    signatures: str = ""
    state: str = ""
    since: int = 0  # the window's start, ns (0: everything)


@dataclass(frozen=True)
class Options:
    days: int | None = None  # None: rescan.days
    jobs: int = 0  # 0: scan.jobs, else scanner.default_jobs


@dataclass(frozen=True)
class Actions:
    """Hooks for what follows a finding (rescan-act: --quarantine, --notify). Both run on
    the calling thread. ``infected(result, finding_id)``: after the finding is committed.
    ``done(state, summary)``: after the scan, the state still open and locked."""

    infected: Callable[[Result, int], None] | None = None
    done: Callable[[State, RescanSummary], None] | None = None


def run(
    cfg: Config,
    paths: Sequence[str],
    report: Report,
    *,
    options: Options = Options(),  # noqa: B008 - frozen, never mutated
    actions: Actions = Actions(),  # noqa: B008 - frozen, never mutated
) -> RescanSummary:
    """Rescan ``paths`` (else the configured roots) and report each message scanned."""
    engine = Engine.from_config(cfg)
    preflight(engine)
    ident = identity.current(engine)
    summary = RescanSummary(signatures=ident.describe())

    def note(problem: Problem) -> None:
        summary.note(problem)
        report.problem(problem)

    if ident.blind:
        text = "reports no database version and its DatabaseDirectory is not readable here: "
        note(Problem("clamd", text + "new signatures there go unseen by rescan", False))
    found, problems = roots.resolve(cfg, paths)
    for problem in problems:
        note(problem)
    state_path = cfg[K.RESCAN_STATE]
    state = State.open(state_path, ident.digest, lambda text: note(Problem("state", text, False)))
    summary.state = state.path
    try:
        now = time.time_ns()
        days = cfg[K.RESCAN_DAYS] if options.days is None else options.days
        summary.since = window.since(days, now)
        # What is forgotten: older than the wider of this run's window and the configured
        # one (a one-off --days 3 must not make the next run scan a week again).
        forget = min(summary.since, window.since(cfg[K.RESCAN_DAYS], now))
        summary.jobs = options.jobs or cfg[K.JOBS] or default_jobs(engine)
        worker = Worker(cfg, engine, ScanOptions(), moving=False)
        rescan = _Rescan(state, summary, report, actions)
        started = time.monotonic()
        items = rescan.items(found, named=bool(paths))
        scan_all(items, summary.jobs, worker, rescan.record)
        rescan.finish()
        summary.seconds = time.monotonic() - started
        state.prune(forget)
        state.set_last_run(_facts(summary))
        if actions.done is not None:
            actions.done(state, summary)
    finally:
        state.close()
    return summary


@dataclass
class _Mbox:
    """An mbox read this run: its fstat when the walk opened it, and its messages."""

    st: os.stat_result
    messages: int = 0
    outside: int = 0
    failed: bool = False
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)  # start -> (crc, date)


class _Rescan:
    """Filters the walk through the state and records each result in it."""

    def __init__(
        self, state: State, summary: RescanSummary, report: Report, actions: Actions
    ) -> None:
        self.state = state
        self.summary = summary
        self.report = report
        self.actions = actions
        self.since = summary.since
        self.mboxes: dict[tuple[int, int], _Mbox] = {}

    def known(self, path: str, st: os.stat_result) -> bool:
        """The walk's hook (walk.Known): an mbox unchanged since its last complete scan is not
        read; its messages count as skipped (or outside the window) as they did then."""
        row = self.state.mbox_unchanged(st, self.since)
        if row is not None:
            self.summary.skipped += row.messages
            self.summary.outside += row.outside
            return True
        self.mboxes[(st.st_dev, st.st_ino)] = _Mbox(st)
        return False

    def items(self, paths: Sequence[str], *, named: bool) -> Iterator[Message | Problem]:
        """The walk's items but the messages the state knows and those before the window.
        ``named``: the paths are ROOT arguments (walk.walk)."""
        for item in walk(paths, known=self.known, named=named):
            if isinstance(item, Problem) or self._wanted(item):
                yield item

    def _wanted(self, m: Message) -> bool:
        if m.format == "mbox":
            return self._wanted_mbox(m)
        if self.since and m.mtime < self.since:
            self.summary.outside += 1
            return False
        if self.state.file_known(m.dev, m.ino, m.size, m.mtime):
            self.summary.skipped += 1
            return False
        return True

    def _wanted_mbox(self, m: Message) -> bool:
        box = self.mboxes[(m.dev, m.ino)]
        assert m.source is not None  # noqa: S101 - walk's mbox messages always have one
        line = os.pread(m.source.fd, min(m.offset - m.start, FROM_LINE_MAX), m.start)
        date = window.from_line_time(line)
        if self.since and date is not None and date < self.since:
            box.outside += 1
            self.summary.outside += 1
            return False
        box.messages += 1
        crc = zlib.crc32(line)
        if self.state.mbox_message_known(m.dev, m.ino, m.start, m.size, crc):
            self.summary.skipped += 1
            return False
        # No date: in the window, and kept in the state for rescan.days from now.
        box.pending[m.start] = (crc, date if date is not None else time.time_ns())
        return True

    def record(self, item: Result | Problem) -> None:
        summary, report = self.summary, self.report
        if isinstance(item, Problem):
            summary.note(item)
            report.problem(item)
            return
        summary.add(item)
        report.result(item)
        m = item.message
        row: tuple[int, ...]
        if m.format == "mbox":
            box = self.mboxes[(m.dev, m.ino)]
            crc, date = box.pending.pop(m.start)
            if item.status == "failed":
                box.failed = True
                return
            row = (m.dev, m.ino, m.start, m.size, crc, date)
        else:
            if item.status == "failed":
                return  # not recorded: the next run tries again
            row = (m.dev, m.ino, m.size, m.mtime)
        verdict = item.verdict
        if isinstance(verdict, Infected):
            where = (m.path, m.mailbox, m.format, m.key)
            finding = self.state.found(where, verdict.names, row)
            if self.actions.infected is not None:
                self.actions.infected(item, finding)
        elif len(row) == 4:
            self.state.scanned_file(*row)
        else:
            self.state.scanned_mbox_message(*row)

    def finish(self) -> None:
        """Every mbox whose messages were all recorded is skipped unread next time."""
        for box in self.mboxes.values():
            if not box.failed and (box.messages or box.outside):  # an mbox, not a loose file
                st = box.st
                row = MboxRow(st.st_size, st.st_mtime_ns, box.messages, box.outside, self.since)
                self.state.scanned_mbox(st, row)


def _facts(summary: RescanSummary) -> dict[str, object]:
    """What ``sig stats`` shows of the last run."""
    return {
        "finished": time.time(),
        "seconds": round(summary.seconds, 3),
        "scanned": summary.scanned,
        "skipped": summary.skipped,
        "infected": summary.infected,
        "errors": summary.errors + summary.failed,
        "signatures": summary.signatures,
    }
