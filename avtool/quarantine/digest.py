"""``avtool quarantine digest``: one mail to notify.postmaster listing what arrived in the
quarantine since the last digest (issue 17; notify.digest = "daily" has the daily job send it).

Where the last digest stopped is the stamp file ``.digest-stamp`` in the quarantine dir (a name
no entry can have: store._ID), written only once sendmail took the digest: a digest that could
not be sent is sent again, whole, next time. It holds the newest entry time listed and the ids
listed with that same second, so that an entry made in that second after the digest is still
listed next time (ids sort by time, but not by arrival within a second). Read and written
through the store's directory descriptor, never following a link.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import stat
from dataclasses import dataclass

from avtool.config import Config
from avtool.config import keys as K
from avtool.quarantine import notices
from avtool.quarantine.store import Entry, Store, iso

STAMP = ".digest-stamp"
MAX_LISTED = 500  # entries written out in one digest; the rest are counted
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Stamp:
    time: str = ""  # YYYYmmddTHHMMSS of the newest entry listed so far
    ids: tuple[str, ...] = ()  # the entries of that second already listed
    sent: str | None = None  # when the last digest went out (ISO 8601)


def read_stamp(store: Store) -> Stamp:
    """The last digest's stamp; none (list everything) when there is none or it is not ours."""
    if store.fd < 0:
        return Stamp()
    try:
        fd = os.open(STAMP, _READ, dir_fd=store.fd)
    except FileNotFoundError:
        return Stamp()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Stamp()
        info = json.loads(os.read(fd, 1 << 20))
        return Stamp(str(info["time"]), tuple(map(str, info["ids"])), info.get("sent"))
    except (ValueError, KeyError, TypeError):
        return Stamp()  # unreadable: a digest of everything is the safe side
    finally:
        os.close(fd)


def new_since(store: Store, stamp: Stamp) -> list[Entry]:
    """The entries the last digest did not list, oldest first."""
    ids = [
        i
        for i in reversed(store.ids())
        if i[:15] > stamp.time or (i[:15] == stamp.time and i not in stamp.ids)
    ]
    return [store.entry(i) for i in ids]


def write_stamp(store: Store, old: Stamp, listed: list[Entry]) -> None:
    """Remember what this digest listed (after it was sent): atomically, 0600, no link."""
    newest = max(old.time, *(e.id[:15] for e in listed))
    ids = {i for i in old.ids if i[:15] == newest} | {e.id for e in listed if e.id[:15] == newest}
    now = iso(datetime.datetime.now(datetime.UTC))
    text = json.dumps({"time": newest, "ids": sorted(ids), "sent": now})
    tmp = STAMP + ".new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=store.fd)
    fd = os.open(tmp, _NEW, 0o600, dir_fd=store.fd)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, STAMP, src_dir_fd=store.fd, dst_dir_fd=store.fd)


def notice(cfg: Config, entries: list[Entry], stamp: Stamp) -> notices.Notice:
    """The digest mail for ``entries`` (the digest.txt template)."""
    lines = []
    for e in entries[:MAX_LISTED]:
        when = e.received.strftime("%Y-%m-%d %H:%M:%S UTC") if e.received else "-"
        lines.append(f"  {e.id}  ({when})")
        if e.error:
            lines.append(f"      {notices.clean(e.error)}")
            continue
        rcpts = notices.clean(", ".join(f"<{r}>" for r in e.recipients[:5]))
        more = f" and {len(e.recipients) - 5} more" if len(e.recipients) > 5 else ""
        lines.append(f"      from <{notices.clean(e.sender or '')}> to {rcpts}{more}")
        lines.append(f"      {notices.clean(', '.join(e.names) or e.verdict or '-')}")
    if len(entries) > MAX_LISTED:
        lines.append(f"  ... and {len(entries) - MAX_LISTED} more: avtool quarantine list")
    values = {
        "count": str(len(entries)),
        "since": stamp.sent or "the quarantine began",
        "entries": "\n".join(lines) + "\n",
        "host": socket.gethostname(),
    }
    admins: tuple[str, ...] = cfg[K.NOTIFY_POSTMASTER]
    return notices.Notice("digest", admins, values)
