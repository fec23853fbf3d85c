"""What ``avtool rescan`` does with its findings besides reporting them, built into
runner.Actions from the options:

- ``--quarantine`` (or ``rescan.action = "quarantine"``): once the scan is over, each infected
  message moves into avtool's quarantine store as an entry of origin "mailbox"
  (quarantine/intake.py: root acts only through no-follow descriptors, on the inode scanned),
  from where ``avtool quarantine release`` puts it back (quarantine/putback.py). Moving waits
  for the end of the scan: the walk's mbox descriptors must be closed first, since closing
  any descriptor of a file drops this process's fcntl locks on it (fcntl(2)), which the cut
  out of an mbox takes.
- ``--notify``: one report to notify.postmaster of every finding not reported yet (the state's
  findings table, ``reported``), so that what a killed run found is reported by the next one,
  and a finding once reported is not again; with ``rescan.notify_owners`` each mailbox's owner
  gets one too, of their own. A finding is marked reported once the postmaster's report is
  handed to sendmail: a kill between the two can send it twice, never lose it.
- Always: the summary of the run for ``avtool sig stats`` and ``--if-changed`` (last.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from avtool.config import Config
from avtool.config import keys as K
from avtool.engine import Infected
from avtool.errors import AvtoolError
from avtool.quarantine.intake import Found, StoreWriter, Taken, take
from avtool.rescan import last, notice, window
from avtool.rescan.runner import Actions, RescanSummary
from avtool.rescan.state import Finding, State
from avtool.safedir import Unsafe
from avtool.scan.mailbox import Moved, Problem
from avtool.scan.mailbox.mbox import digest
from avtool.scan.mailbox.walk import why
from avtool.scan.scanner import Report, Result


def build(cfg: Config, report: Report, *, quarantine: bool, notify: bool) -> Actions:
    """The hooks for these options (``quarantine`` also when rescan.action says so)."""
    acts = _Acts(cfg, report, quarantine or cfg[K.RESCAN_ACTION] == "quarantine", notify)
    return Actions(infected=acts.infected, done=acts.done)


def moving(cfg: Config, quarantine: bool) -> bool:
    return quarantine or cfg[K.RESCAN_ACTION] == "quarantine"


@dataclass
class _Seen:
    """What this run learnt of a finding, for the report (the state keeps where and names)."""

    found: Found
    subject: str | None
    delivered: int | None  # ns
    owner: int | None
    ident: str | None = None  # the quarantine id, once moved


class _Acts:
    def __init__(self, cfg: Config, report: Report, quarantine: bool, notify: bool) -> None:
        self.cfg = cfg
        self.report = report
        self.quarantine = quarantine
        self.notify = notify
        self.seen: dict[int, _Seen] = {}

    def infected(self, result: Result, finding: int) -> None:
        """Called once the finding is committed: what the report and the move need, taken
        while the mbox's descriptor is still open; then the message goes without it."""
        m = result.message
        assert isinstance(result.verdict, Infected)  # noqa: S101 - runner calls it for those only
        mark, delivered = result.digest, m.mtime or None
        if m.format == "mbox" and m.source is not None:
            if self.quarantine and not mark:
                mark = digest(m.source.fd, m.offset, m.size)
            line = os.pread(m.source.fd, min(m.offset - m.start, 1024), m.start)
            delivered = window.from_line_time(line)
        names = tuple(result.verdict.names)
        found = Found(replace(m, source=None), names, mark)
        self.seen[finding] = _Seen(found, result.subject, delivered, _owner(m.mailbox))

    def done(self, state: State, summary: RescanSummary) -> None:
        if self.quarantine:
            self._move(summary)
        if self.notify:
            self._notify(state, summary)
        try:
            last.write(state, summary)
        except (OSError, Unsafe) as e:
            self._problem(summary, Problem(state.path, f"summary for sig stats not written: {e}"))

    def _problem(self, summary: RescanSummary, problem: Problem) -> None:
        summary.note(problem)
        self.report.problem(problem)

    def _move(self, summary: RescanSummary) -> None:
        if not self.seen:
            return
        where = self.cfg[K.QUARANTINE_DIR]
        try:
            store = StoreWriter(where)
        except (OSError, Unsafe) as e:
            reason = why(e) if isinstance(e, OSError) else str(e)
            text = f"not quarantined ({len(self.seen)} message(s)): {reason}"
            self._problem(summary, Problem(where, text))
            return
        by_found = {id(s.found): s for s in self.seen.values()}
        with store:
            found = [s.found for s in self.seen.values()]
            events = take(store, found, lock_timeout=self.cfg[K.LOCK_TIMEOUT])
            for event in events:
                if isinstance(event, Problem):
                    self._problem(summary, event)
                    continue
                by_found[id(event.found)].ident = event.ident
                summary.moved += 1
                self.report.moved(_moved(event))

    def _notify(self, state: State, summary: RescanSummary) -> None:
        pending = state.findings(unreported=True)
        if not pending:
            return
        items = [self._item(f) for f in pending]
        try:
            owners = self.cfg[K.RESCAN_NOTIFY_OWNERS]
            sent = notice.send_reports(
                self.cfg, items, owners=owners, signatures=summary.signatures
            )
        except AvtoolError as e:
            self._problem(summary, Problem("--notify", f"report not sent: {e}; sent next time"))
            return
        for problem in sent.problems:
            self._problem(summary, problem)
        if sent.postmaster:
            state.mark_reported(f.id for f in pending)

    def _item(self, f: Finding) -> notice.Item:
        seen = self.seen.get(f.id)
        if seen is None:  # found by an earlier run that was stopped before its report
            return notice.Item.earlier(f, _owner(f.mailbox))
        return notice.Item(
            mailbox=f.mailbox,
            key=f.key,
            names=f.names,
            owner=seen.owner,
            subject=seen.subject,
            delivered=seen.delivered,
            where=f"quarantined as {seen.ident}" if seen.ident else "still in the mailbox",
            release=seen.ident,
        )


def _moved(taken: Taken) -> Moved:
    return Moved(taken.found.message, f"quarantine {taken.ident}")


def _owner(mailbox: str) -> int | None:
    """The uid that owns the mailbox (a Maildir or MH folder, an mbox file): metadata only,
    for the report; the move checks ownership through its own descriptors."""
    try:
        return os.stat(mailbox, follow_symlinks=False).st_uid
    except OSError:
        return None
