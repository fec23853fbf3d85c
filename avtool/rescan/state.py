"""What rescan remembers between runs: which messages it scanned with which signatures, and
what it found. One SQLite file (``rescan.state``), root's, 0600.

Keys, so that what a reader does to a message does not make it new, and what changes its
bytes does:

- A file (Maildir, MH, a loose message) is ``(st_dev, st_ino)`` with its size and mtime: a
  rename (``new/`` to ``cur/``, a flag change, a move to another folder on the same file
  system) keeps all four; a rewrite changes the size or mtime; a copy is another inode.
- An mbox message is ``(mbox st_dev, st_ino, From_ line offset, length)`` and a CRC of its
  From_ line (sender and delivery time). An mbox whose (dev, ino, size, mtime) are those of
  its last complete scan is not read at all (``mboxes``).

A signature change (identity.py) empties the three tables: everything in the window is
scanned again. ``findings`` stays: one row per infected message, written in the transaction
that marks it scanned and committed at once, before any action on it (``--quarantine``), so
a kill at any moment loses no finding. Clean results are committed in batches: a kill loses
at most a batch, which the next run scans again. WAL with synchronous=NORMAL: a killed
process never leaves the file corrupt (sqlite.org/wal.html, "durability": only a power loss
can lose the last commits). A file SQLite cannot read is moved aside with one warning and
rebuilt; the run goes on.

The directory is checked by the pid file's rule (safedir.open_dir, private: no other user
can write it or replace a directory on its path); the file is made 0600 and never through a
link. One run at a time: an flock on the file.

For the actions: ``findings(unreported=True)`` and ``mark_reported`` (``--notify``), and
``last_run(path)`` (``sig stats``, read-only, no lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from avtool import safedir
from avtool.errors import UsageError

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files(
    dev INTEGER, ino INTEGER, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
    PRIMARY KEY(dev, ino)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mbox_messages(
    dev INTEGER, ino INTEGER, start INTEGER, length INTEGER, crc INTEGER NOT NULL,
    date INTEGER NOT NULL, PRIMARY KEY(dev, ino, start, length)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mboxes(
    dev INTEGER, ino INTEGER, size INTEGER NOT NULL, mtime INTEGER NOT NULL,
    messages INTEGER NOT NULL, outside INTEGER NOT NULL, since INTEGER NOT NULL,
    PRIMARY KEY(dev, ino)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings(
    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, path TEXT NOT NULL, mailbox TEXT NOT NULL,
    format TEXT NOT NULL, key TEXT NOT NULL, names TEXT NOT NULL, signatures TEXT NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0);
"""
BATCH = 2000  # clean rows per commit: what a kill can cost the next run, at most
BATCH_SECONDS = 2.0


class Corrupt(Exception):
    """The state file is not a database SQLite can use."""


@dataclass(frozen=True, slots=True)
class Finding:
    id: int
    at: float
    path: str
    mailbox: str
    format: str
    key: str
    names: tuple[str, ...]
    signatures: str
    reported: bool


@dataclass(frozen=True, slots=True)
class MboxRow:
    """An mbox as its last complete scan left it."""

    size: int
    mtime: int
    messages: int  # scanned or skipped then (in the window)
    outside: int  # older than the window then
    since: int  # the window's start then (ns; 0: no window)


Warn = Callable[[str], None]
Where = tuple[str, str, str, str]
Scanned = tuple[int, ...]


class State:
    """The open state: ``State.open(path, identity, warn)``; ``close()`` when done."""

    def __init__(self, path: str, db: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self.db = db
        self._lock_fd = lock_fd
        self.rebuilt = False
        self.files: dict[tuple[int, int], tuple[int, int]] = {}
        self.mbox_messages: dict[tuple[int, int, int, int], int] = {}
        self.mboxes: dict[tuple[int, int], MboxRow] = {}
        self._files: list[Scanned] = []  # (dev, ino, size, mtime)
        self._mbox_rows: list[Scanned] = []  # (dev, ino, start, length, crc, date)
        self._last_commit = time.monotonic()

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, signatures: str, warn: Warn) -> State:
        """The state at ``path`` for the signatures ``signatures`` (identity digest), loaded.
        UsageError (one line) when it cannot be opened safely; a corrupt file is moved aside
        (``warn`` says where) and a new one made."""
        path = os.path.abspath(path)
        directory, name = os.path.split(path)
        try:
            dir_fd = safedir.open_dir(directory, private=True, create=True)
        except safedir.Unsafe as e:
            raise UsageError(f"rescan.state {path}: refused: {e}") from None
        except OSError as e:
            raise UsageError(f"rescan.state {path}: {e.strerror or e}") from None
        try:
            state = cls._open_in(dir_fd, path, name, signatures)
            if state is None:
                aside = os.path.join(directory, _move_aside(dir_fd, name))
                warn(f"{path}: not a usable database; moved to {aside}, starting afresh")
                state = cls._open_in(dir_fd, path, name, signatures)
                if state is None:
                    raise UsageError(f"rescan.state {path}: cannot be rebuilt")
                state.rebuilt = True
            return state
        finally:
            os.close(dir_fd)

    @classmethod
    def _open_in(cls, dir_fd: int, path: str, name: str, signatures: str) -> State | None:
        """None when the file is corrupt."""
        fd = _private_file(dir_fd, name, path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"another avtool rescan is using {path}; not run") from None
            # Through the descriptor's directory, checked above: a name swapped in meanwhile
            # cannot redirect it (the directory is ours alone: safedir's private rule).
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                state = cls(path, db, fd)
                state._prepare(signatures)
            except sqlite3.DatabaseError:
                db.close()
                os.close(fd)
                return None
            return state
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _prepare(self, signatures: str) -> None:
        db = self.db
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        if meta.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema {meta.get('schema')!r}")
        if meta.get("signatures") != signatures:
            # New signatures: nothing scanned counts any more. One transaction: a kill
            # leaves either the old rows with the old identity or none with the new one.
            with self._transaction():
                for table in ("files", "mbox_messages", "mboxes"):
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
                self._set("schema", SCHEMA_VERSION)
                self._set("signatures", signatures)
            return
        self.files = {(d, i): (s, m) for d, i, s, m in db.execute("SELECT * FROM files")}
        self.mbox_messages = {
            (d, i, st, ln): crc
            for d, i, st, ln, crc in db.execute(
                "SELECT dev, ino, start, length, crc FROM mbox_messages"
            )
        }
        self.mboxes = {(r[0], r[1]): MboxRow(*r[2:]) for r in db.execute("SELECT * FROM mboxes")}

    def close(self) -> None:
        """Commit what is pending, fold the WAL back into the file, release the lock."""
        try:
            self.flush()
            with contextlib.suppress(sqlite3.DatabaseError):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.db.close()
            os.close(self._lock_fd)

    # ---- what was scanned ------------------------------------------------------------------------
    def file_known(self, dev: int, ino: int, size: int, mtime: int) -> bool:
        return self.files.get((dev, ino)) == (size, mtime)

    def mbox_message_known(self, dev: int, ino: int, start: int, length: int, crc: int) -> bool:
        return self.mbox_messages.get((dev, ino, start, length)) == crc

    def mbox_unchanged(self, st: os.stat_result, since: int) -> MboxRow | None:
        """The row of an mbox unchanged since a complete scan whose window reached back at
        least to ``since`` (a wider window now must read it)."""
        row = self.mboxes.get((st.st_dev, st.st_ino))
        if row is None or (row.size, row.mtime) != (st.st_size, st.st_mtime_ns):
            return None
        return row if row.since <= since else None

    def scanned_file(self, dev: int, ino: int, size: int, mtime: int) -> None:
        self._files.append((dev, ino, size, mtime))
        self._maybe_flush()

    def scanned_mbox_message(
        self, dev: int, ino: int, start: int, length: int, crc: int, date: int
    ) -> None:
        self._mbox_rows.append((dev, ino, start, length, crc, date))
        self._maybe_flush()

    def scanned_mbox(self, st: os.stat_result, row: MboxRow) -> None:
        """Every message of this mbox (as ``st`` found it) is recorded: next time, unread."""
        with self._transaction():
            self._write_pending()
            self.db.execute(
                "INSERT OR REPLACE INTO mboxes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (st.st_dev, st.st_ino, row.size, row.mtime, row.messages, row.outside, row.since),
            )

    def found(self, where: Where, names: Iterable[str], scanned: Scanned) -> int:
        """Record an infected message and, in the same transaction, that it was scanned
        (``scanned``: a files row of 4 values or an mbox_messages row of 6); commit now.
        ``where``: (path, mailbox, format, key). Returns the finding's id."""
        if len(scanned) == 4:
            self._files.append(scanned)
        else:
            self._mbox_rows.append(scanned)
        path, mailbox, fmt, key = where
        with self._transaction():
            self._write_pending()
            cursor = self.db.execute(
                "INSERT INTO findings(at, path, mailbox, format, key, names, signatures)"
                " VALUES (?, ?, ?, ?, ?, ?, (SELECT value FROM meta WHERE name = 'signatures'))",
                (time.time_ns(), path, mailbox, fmt, key, json.dumps(list(names))),
            )
        return int(cursor.lastrowid or 0)

    def flush(self) -> None:
        if self._files or self._mbox_rows:
            with self._transaction():
                self._write_pending()

    def prune(self, since: int) -> None:
        """Forget what is older than the window's start (``since``, ns): it is not scanned,
        and the state stays the size of the window, not of the mail store."""
        if since <= 0:
            return
        self.flush()
        with self._transaction():
            self.db.execute("DELETE FROM files WHERE mtime < ?", (since,))
            self.db.execute("DELETE FROM mbox_messages WHERE date < ?", (since,))

    # ---- findings and runs, for --notify and sig stats ------------------------------------------
    def findings(self, *, unreported: bool = False) -> list[Finding]:
        rows = self.db.execute(
            "SELECT * FROM findings WHERE reported <= ? ORDER BY id", (0 if unreported else 1,)
        )
        return [
            Finding(i, at / 1e9, p, mb, f, k, tuple(json.loads(n)), s, bool(r))
            for i, at, p, mb, f, k, n, s, r in rows
        ]

    def mark_reported(self, ids: Iterable[int]) -> None:
        with self._transaction():
            self.db.executemany(
                "UPDATE findings SET reported = 1 WHERE id = ?", [(i,) for i in ids]
            )

    def set_last_run(self, facts: dict[str, object]) -> None:
        self.flush()
        with self._transaction():
            self._set("last_run", json.dumps(facts, sort_keys=True))

    def last_run(self) -> dict[str, object] | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = 'last_run'").fetchone()
        return json.loads(row[0]) if row else None

    # ---- inside ------------------------------------------------------------------------------
    def _maybe_flush(self) -> None:
        pending = len(self._files) + len(self._mbox_rows)
        if pending >= BATCH or time.monotonic() - self._last_commit >= BATCH_SECONDS:
            self.flush()

    def _write_pending(self) -> None:
        if self._files:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", self._files)
            self._files = []
        if self._mbox_rows:
            self.db.executemany(
                "INSERT OR REPLACE INTO mbox_messages VALUES (?, ?, ?, ?, ?, ?)", self._mbox_rows
            )
            self._mbox_rows = []

    def _set(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._last_commit = time.monotonic()


def last_run(path: str) -> dict[str, object] | None:
    """What the last complete run recorded (``sig stats``: when, how many scanned, found),
    read without the lock and without changing anything; None when there is none yet or the
    file cannot be read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        row = db.execute("SELECT value FROM meta WHERE name = 'last_run'").fetchone()
        found: dict[str, object] | None = json.loads(row[0]) if row else None
        return found
    except (sqlite3.Error, ValueError):
        return None
    finally:
        db.close()


def _private_file(dir_fd: int, name: str, path: str) -> int:
    """The state file, opened (made if missing) without following a link, a regular file of
    ours, 0600 (it names every mailbox and what was found in it)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as e:
        raise UsageError(f"rescan.state {path}: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UsageError(f"rescan.state {path}: refused: not a regular file of ours")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.fchmod(fd, 0o600)
    return fd


def _move_aside(dir_fd: int, name: str) -> str:
    """Rename the corrupt file (and its WAL and shared-memory files) out of the way; the
    new name, kept for whoever wants to look at it."""
    aside = f"{name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            os.rename(name + suffix, aside + suffix, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return aside
