"""The reports of ``avtool rescan --notify``: one to notify.postmaster listing every finding
not reported yet, and with ``rescan.notify_owners`` one to each mailbox's owner listing theirs.

Each finding is told by where it is, whose mailbox, its delivery date, its Subject and the
names; never any of its content beyond that. The texts come from templates the admin can
replace (share/notices/rescan.txt, rescan-owner.txt; notify.templates), and go out through
the one way avtool sends mail (quarantine/notices.py: Courier's sendmail, null sender).
"""

from __future__ import annotations

import datetime
import pwd
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from avtool.config import Config
from avtool.config import keys as K
from avtool.quarantine import notices
from avtool.rescan.state import Finding
from avtool.scan.mailbox import Problem
from avtool.scan.mailbox.message import printable


@dataclass(frozen=True)
class Item:
    """One finding as the reports tell it."""

    mailbox: str
    key: str
    names: tuple[str, ...]
    owner: int | None  # uid
    subject: str | None
    delivered: int | None  # ns since the epoch
    where: str  # "quarantined as ID", "still in the mailbox", ...
    release: str | None = None  # the quarantine id

    @classmethod
    def earlier(cls, f: Finding, owner: int | None) -> Item:
        """A finding of an earlier run that stopped before its report (killed)."""
        found = _date(int(f.at * 1e9))
        where = f"found {found} by a run that stopped before its report"
        return cls(f.mailbox, f.key, f.names, owner, None, None, where)


@dataclass
class Sent:
    postmaster: bool = False  # the postmaster's report went out (or nobody is to get one)
    problems: list[Problem] = field(default_factory=list)


def entries(items: Sequence[Item]) -> str:
    """The findings as text, a block each (header fields made printable: they are the
    sender's, and may hold control characters)."""
    out = []
    for item in items:
        where = printable(item.mailbox, 400) + (
            f" [{printable(item.key, 200)}]" if item.key else ""
        )
        out += [
            f"  mailbox:   {where}",
            f"  owner:     {owner_name(item.owner)}",
            f"  delivered: {_date(item.delivered)}",
            f"  subject:   {printable(item.subject) if item.subject else '-'}",
            f"  found:     {', '.join(printable(n) for n in item.names) or '-'}",
            f"  now:       {item.where}",
            "",
        ]
    return "\n".join(out) + ("\n" if out else "")


def send_reports(cfg: Config, items: Sequence[Item], *, owners: bool, signatures: str) -> Sent:
    """The postmaster's report (notices.NoticeError if it fails: nothing is marked), then one
    per owner if asked (a failure there is a Problem: the postmaster knows already)."""
    sent = Sent()
    base = {"host": socket.gethostname(), "signatures": signatures or "-"}
    admins: tuple[str, ...] = cfg[K.NOTIFY_POSTMASTER]
    if admins:
        values = {**base, "count": str(len(items)), "entries": entries(items)}
        text = notices.compose(cfg, notices.Notice("rescan", admins, values))
        notices.send(cfg, list(admins), text)
    sent.postmaster = True
    if owners:
        contact = ", ".join(admins) or "your postmaster"
        for uid, theirs in _by_owner(items).items():
            name = owner_name(uid)
            values = {**base, "count": str(len(theirs)), "contact": contact}
            values["entries"] = entries(theirs)
            try:
                text = notices.compose(cfg, notices.Notice("rescan-owner", (name,), values))
                notices.send(cfg, [name], text)
            except notices.NoticeError as e:
                sent.problems.append(Problem("--notify", f"report to {name} not sent: {e}"))
    return sent


def _by_owner(items: Sequence[Item]) -> dict[int, list[Item]]:
    out: dict[int, list[Item]] = {}
    for item in items:
        if item.owner is not None and item.owner != 0:  # root's mail goes to the postmaster
            out.setdefault(item.owner, []).append(item)
    return out


def owner_name(uid: int | None) -> str:
    if uid is None:
        return "-"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _date(ns: int | None) -> str:
    if not ns:
        return "-"
    when = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
