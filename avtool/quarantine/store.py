"""Read, delete and purge the entries that Pipeline._quarantine writes.

An entry is a 0700 directory ``<YYYYmmddTHHMMSS>-<message id>`` (UTC stamp; the id is Courier's
message id, or the data file's name, with ``/`` made ``_``) holding 0600 files: ``data`` (the
message), ``control.N`` (Courier's control files) and ``verdict.json``. Everything is opened
from the store's directory descriptor with O_NOFOLLOW: a link planted in the store is reported,
never followed (design.md, "Privileges").
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from avtool import safedir
from avtool.errors import UsageError

# Where a released entry goes on its way out (release.py): a name that _ID does not match.
GONE_PREFIX = ".released-"
# What the daemon generates: a 15-character UTC stamp, "-", then Courier's message id (hex
# digits and dots) or a spool file name; no "/", never "." or ".." alone.
_ID = re.compile(r"\A\d{8}T\d{6}-[A-Za-z0-9._-]{1,200}\Z")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_VERDICTS = {"Infected": "infected", "Unchecked": "unchecked", "Clean": "clean", None: "unchecked"}


class NotFound(UsageError):
    """No entry with this id."""


class Busy(UsageError):
    """Another process holds the entry's lock (a release in progress)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One held message as the CLI shows it; ``error`` says why the rest may be missing."""

    id: str
    received: datetime.datetime | None
    sender: str | None = None
    recipients: list[str] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    size: int | None = None
    verdict: str | None = None
    reason: str | None = None
    message_id: str | None = None
    origin: str = "filter"
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["received"] = iso(self.received)
        if self.error is None:
            del out["error"]
        return out


def iso(when: datetime.datetime | None) -> str | None:
    """ISO 8601 in UTC with a "Z", as scripts expect of ``list --json``."""
    return when.isoformat().replace("+00:00", "Z") if when else None


def check_id(ident: str) -> str:
    """``ident`` if it is one the daemon could have made; otherwise one clear UsageError."""
    if not _ID.match(ident):
        raise UsageError(f"{ident!r}: not a quarantine id (expected YYYYmmddTHHMMSS-NAME)")
    return ident


def _received(ident: str) -> datetime.datetime:
    return datetime.datetime.strptime(ident[:15], "%Y%m%dT%H%M%S").replace(tzinfo=datetime.UTC)


class Store:
    """The quarantine directory, opened once (no link followed on the way: safedir)."""

    def __init__(self, root: str) -> None:
        self.root = root
        try:
            self.fd = safedir.open_dir(root)
        except FileNotFoundError:
            self.fd = -1  # nothing quarantined yet
        except PermissionError:
            raise UsageError(
                f"{root}: permission denied (run as root or as the filter's user)"
            ) from None
        except (OSError, safedir.Unsafe) as e:
            raise UsageError(f"{root}: {e}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ids(self) -> list[str]:
        """Every entry id, newest first; names the daemon cannot have made are skipped."""
        if self.fd < 0:
            return []
        return sorted((n for n in os.listdir(self.fd) if _ID.match(n)), reverse=True)

    def entries(self) -> Iterator[Entry]:
        for ident in self.ids():
            yield self.entry(ident)

    def _open_entry(self, ident: str) -> int:
        check_id(ident)
        if self.fd < 0:
            raise NotFound(f"{ident}: no such quarantine entry")
        try:
            return os.open(ident, _DIR, dir_fd=self.fd)
        except FileNotFoundError:
            raise NotFound(f"{ident}: no such quarantine entry") from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UsageError(f"{ident}: not a directory (a link?): refused") from None
            raise UsageError(f"{ident}: {e.strerror}") from None

    def open_locked(self, ident: str) -> int:
        """The entry's directory descriptor, holding its lock: flock(2) on that descriptor,
        not blocking, so that two releases of one id deliver it once. The lock goes with the
        descriptor (close it to let go). Checked again once locked: an entry that a holder
        of the lock removed or renamed meanwhile is NotFound, never acted on twice."""
        fd = self._open_entry(ident)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(f"{ident}: being released by another process") from None
            try:
                now = os.stat(ident, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            held = os.fstat(fd)
            if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                raise NotFound(f"{ident}: no such quarantine entry (released or deleted meanwhile)")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def entry(self, ident: str) -> Entry:
        """The record for ``ident``; a corrupt entry gives a record with ``error`` set."""
        try:
            fd = self._open_entry(ident)
        except NotFound:
            raise
        except UsageError as e:
            return Entry(ident, _received(ident), error=str(e))
        try:
            return _parse(ident, fd)
        finally:
            os.close(fd)

    def data(self, ident: str) -> bytes:
        """The held message's bytes (``--raw``, ``show``)."""
        fd = self._open_entry(ident)
        try:
            return _read(fd, "data")
        except OSError as e:
            raise UsageError(f"{ident}: data: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def delete(self, ident: str) -> None:
        """Remove the entry; rmtree with a dir fd never follows a link (shutil docs). Not
        while a release holds it (open_locked): it may be on its way out already."""
        fd = self.open_locked(ident)
        try:
            shutil.rmtree(ident, dir_fd=self.fd)
        except OSError as e:
            raise UsageError(f"{ident}: cannot delete: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def purge(self, older_than_days: float, now: datetime.datetime | None = None) -> list[str]:
        """Delete every entry received more than ``older_than_days`` ago; the ids deleted.
        Leftovers of releases go too, whatever their age (``sweep_released``)."""
        now = now or datetime.datetime.now(datetime.UTC)
        cutoff = now - datetime.timedelta(days=older_than_days)
        gone = []
        for ident in self.ids():
            if _received(ident) <= cutoff:
                try:
                    self.delete(ident)
                except (Busy, NotFound):
                    continue  # being released, or gone meanwhile: not ours to purge
                gone.append(ident)
        self.sweep_released()
        return gone

    def sweep_released(self) -> None:
        """Remove what releases left on their way out (``GONE_PREFIX`` + id: delivered, then
        renamed out of the id namespace, then not removed: a full disk, a crash). One whose
        release still holds its lock (it is removing it) is left alone."""
        if self.fd < 0:
            return
        for name in os.listdir(self.fd):
            if not (name.startswith(GONE_PREFIX) and _ID.match(name[len(GONE_PREFIX) :])):
                continue
            try:
                fd = os.open(name, _DIR, dir_fd=self.fd)
            except OSError:
                continue  # gone meanwhile, or not a directory: not ours
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(name, dir_fd=self.fd)
            except OSError:
                continue  # locked by its release, or cannot be removed yet
            finally:
                os.close(fd)


def _read(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, _READ, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parse(ident: str, fd: int) -> Entry:
    received = _received(ident)
    try:
        info = json.loads(_read(fd, "verdict.json"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        size = os.stat("data", dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(size.st_mode):
            raise ValueError("data is not a regular file")
    except OSError as e:
        where = e.filename or "verdict.json/data"
        return Entry(ident, received, error=f"corrupt entry: {where}: {e.strerror or e}")
    except ValueError as e:
        return Entry(ident, received, error=f"corrupt entry: {e}")
    return Entry(
        ident,
        received,
        sender=_str(info.get("sender")),
        recipients=[str(r) for r in info.get("recipients") or []],
        names=[str(n) for n in info.get("names") or []],
        size=size.st_size,
        verdict=_VERDICTS.get(info.get("verdict"), str(info.get("verdict")).lower()),
        reason=_str(info.get("reason")),
        message_id=_str(info.get("message_id")),
        origin=str(info.get("origin") or "filter"),
    )


def _str(v: object) -> str | None:
    return None if v is None else str(v)
