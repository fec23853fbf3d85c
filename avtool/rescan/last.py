"""The last rescan in a few facts, in a small JSON file beside the state
(``rescan-last.json``), for two readers:

- ``avtool sig stats`` and its Prometheus output (the time and findings of the last rescan):
  ``sig`` runs as the daemon's user or root, and the state itself is root's, 0600 (it names
  every mailbox); this file holds counts only and is 0644.
- ``avtool rescan --if-changed`` (the hourly job): the identity of the signatures the last
  complete run used. Equal to clamd's now, and no scan failed then: nothing to do, and no
  mailbox is read. A run that was killed never wrote its facts, so the next one runs (and
  resumes from the state).

Written by root into the state's directory, which passed the pid file's rule when the state
was opened (no other user can write it or replace a directory on its path: safedir, private):
a temp file (O_EXCL, O_NOFOLLOW) renamed over the old one, so a reader sees one or the other.
The directory gets search permission for others (0711 when State.open made it 0700), so that
the daemon's user reaches the file; the state in it stays 0600.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import stat
from typing import Any

from avtool import safedir
from avtool.config import Config
from avtool.config import keys as K
from avtool.engine import Engine
from avtool.rescan import identity
from avtool.rescan.runner import RescanSummary
from avtool.rescan.state import State

NAME = "rescan-last.json"
MAX_BYTES = 1 << 16
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What sig stats shows, in this order (the keys of its --json output).
SHOWN = ("last_rescan", "last_rescan_scanned", "last_rescan_infected")


def path_for(cfg: Config) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(cfg[K.RESCAN_STATE])), NAME)


def write(state: State, summary: RescanSummary) -> None:
    """The facts of the run that just ended (``state`` still open)."""
    row = state.db.execute("SELECT value FROM meta WHERE name = 'signatures'").fetchone()
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    facts: dict[str, Any] = {
        "last_rescan": now.isoformat().replace("+00:00", "Z"),
        "last_rescan_scanned": summary.scanned,
        "last_rescan_infected": summary.infected,
        "last_rescan_skipped": summary.skipped,
        "last_rescan_moved": summary.moved,
        "last_rescan_failed": summary.failed,
        "last_rescan_errors": summary.errors,
        "last_rescan_seconds": round(summary.seconds, 3),
        "signatures": summary.signatures,
        "signatures_digest": row[0] if row else None,
    }
    directory, _ = os.path.split(state.path)
    dir_fd = safedir.open_dir(directory, private=True)
    try:
        tmp = f".{NAME}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, _NEW, 0o644, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: the daemon's user reads it
            os.write(fd, json.dumps(facts, indent=1).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        _searchable(dir_fd)
    finally:
        os.close(dir_fd)


def _searchable(dir_fd: int) -> None:
    """The daemon's user must reach the file: search permission on the state's directory
    (State.open makes it 0700). Search only, no listing: the state itself stays 0600."""
    mode = stat.S_IMODE(os.fstat(dir_fd).st_mode)
    if mode & 0o011 != 0o011:
        os.fchmod(dir_fd, mode | 0o011)


def read(cfg: Config) -> dict[str, Any] | None:
    """The last run's facts; None when there are none (no rescan yet) or they cannot be read
    (a link, not a file, another user's sig without access): sig stats then shows none."""
    try:
        fd = os.open(path_for(cfg), _READ)
    except OSError:
        return None
    try:
        facts = json.loads(os.read(fd, MAX_BYTES))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return facts if isinstance(facts, dict) else None


def unchanged(cfg: Config, digest: str) -> bool:
    """Whether the last complete run used the signatures ``digest`` names and none of its
    scans failed: ``--if-changed`` then has nothing to do."""
    facts = read(cfg)
    return bool(
        facts and facts.get("signatures_digest") == digest and not facts.get("last_rescan_failed")
    )


def nothing_new(cfg: Config) -> str | None:
    """For ``--if-changed``: clamd's signatures, described, when they are those of the last
    complete run (then there is nothing to do); None when a rescan is due. Asks each clamd
    for its VERSION and lists its database directory: no mailbox is read."""
    now = identity.current(Engine.from_config(cfg))
    return now.describe() if unchanged(cfg, now.digest) else None
