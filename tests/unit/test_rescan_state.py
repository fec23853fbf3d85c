"""rescan's state file, signature identity and window, without clamd."""

from __future__ import annotations

import calendar
import os
import sqlite3
from pathlib import Path

import pytest

from avtool.errors import UsageError
from avtool.rescan import window
from avtool.rescan.identity import Identity, listing_digest
from avtool.rescan.state import State, last_run

NS = 1_000_000_000


def open_state(path: Path, signatures: str = "sigs-1") -> tuple[State, list[str]]:
    warnings: list[str] = []
    return State.open(str(path), signatures, warnings.append), warnings


def test_rows_survive_a_reopen_with_the_same_signatures_only(tmp_path: Path) -> None:
    path = tmp_path / "s" / "r.sqlite"
    state, _ = open_state(path)
    state.scanned_file(1, 2, 300, 400)
    state.scanned_mbox_message(1, 3, 0, 50, 77, 400)
    finding = state.found(("/m/cur/x", "/m", "maildir", "x"), ["Bad.Sig"], (1, 5, 10, 20))
    state.close()
    state, _ = open_state(path)
    assert state.file_known(1, 2, 300, 400) and state.file_known(1, 5, 10, 20)
    assert not state.file_known(1, 2, 301, 400) and not state.file_known(1, 2, 300, 401)
    assert state.mbox_message_known(1, 3, 0, 50, 77) and not state.mbox_message_known(
        1, 3, 0, 50, 78
    )
    state.close()
    state, _ = open_state(path, "sigs-2")  # new signatures: nothing is known, findings stay
    assert not state.file_known(1, 2, 300, 400) and not state.mbox_message_known(1, 3, 0, 50, 77)
    [kept] = state.findings()
    assert (kept.id, kept.path, kept.names, kept.reported) == (
        finding,
        "/m/cur/x",
        ("Bad.Sig",),
        False,
    )
    state.mark_reported([finding])
    assert state.findings(unreported=True) == []
    state.close()


def test_file_and_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "r.sqlite"
    state, _ = open_state(path)
    state.close()
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    path.chmod(0o644)
    open_state(path)[0].close()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UsageError, match="refused"):
        open_state(shared / "r.sqlite")
    assert not (shared / "r.sqlite").exists()


def test_a_link_as_the_state_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "r.sqlite").symlink_to(target)
    with pytest.raises(UsageError, match="r.sqlite"):
        open_state(tmp_path / "r.sqlite")


def test_one_run_at_a_time(tmp_path: Path) -> None:
    state, _ = open_state(tmp_path / "r.sqlite")
    try:
        with pytest.raises(UsageError, match="another avtool rescan is using"):
            open_state(tmp_path / "r.sqlite")
    finally:
        state.close()


def test_corrupt_file_moved_aside_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    state, _ = open_state(path)
    state.scanned_file(1, 2, 3, 4)
    state.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(4096 - 100)  # the header's page counts and the schema page
    path.write_bytes(bytes(data))
    state, warnings = open_state(path)
    assert state.rebuilt and not state.file_known(1, 2, 3, 4)
    state.close()
    [line] = warnings
    assert line.startswith(f"{path}: not a usable database; moved to {path}.corrupt-")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_prune_forgets_what_left_the_window(tmp_path: Path) -> None:
    state, _ = open_state(tmp_path / "r.sqlite")
    state.scanned_file(1, 1, 10, 100)
    state.scanned_file(1, 2, 10, 300)
    state.prune(200)
    state.close()
    state, _ = open_state(tmp_path / "r.sqlite")
    assert not state.file_known(1, 1, 10, 100) and state.file_known(1, 2, 10, 300)
    state.close()


def test_from_line_dates() -> None:
    jan = calendar.timegm((2024, 1, 1, 0, 0, 0, 0, 0, 0)) * NS
    assert window.from_line_time(b"From a@b Mon Jan  1 00:00:00 2024\n") == jan
    assert window.from_line_time(b"From a@b Mon Jan 1 00:00 2024") == jan
    assert window.from_line_time(b"From a@b Mon Jan  1 00:00:00 UTC 2024") == jan
    assert window.from_line_time(b"From a@b Mon Jan  1 00:00:00 +0100 2024") == jan
    assert window.from_line_time(b"From a@b yesterday") is None
    assert window.from_line_time(b"From a@b Mon Foo  1 00:00:00 2024") is None
    assert window.since(0, 10**18) == 0 and window.since(1, 10**18) == 10**18 - window.DAY


def test_listing_digest_sees_files_added_removed_replaced(tmp_path: Path) -> None:
    (tmp_path / "main.cvd").write_bytes(b"x" * 10)
    first = listing_digest(tmp_path)
    (tmp_path / ".tmp-copy").write_bytes(b"y")
    (tmp_path / "clamav-tmpdir").mkdir()
    assert listing_digest(tmp_path) == first  # temp files and dirs are not signatures
    (tmp_path / "extra.ndb").write_bytes(b"Sig:0:*:41\n")
    added = listing_digest(tmp_path)
    assert added != first
    os.utime(tmp_path / "extra.ndb", ns=(0, 12345))
    assert listing_digest(tmp_path) not in (first, added)
    (tmp_path / "extra.ndb").unlink()
    assert listing_digest(tmp_path) == first
    assert listing_digest(tmp_path / "missing") is None


def test_identity_combines_version_and_listing() -> None:
    a = Identity(("ClamAV 1.4.6/27000/x",), ("d1",))
    assert a.digest != Identity(("ClamAV 1.4.6/27001/x",), ("d1",)).digest
    assert a.digest != Identity(("ClamAV 1.4.6/27000/x",), ("d2",)).digest
    assert not a.blind and Identity(("ClamAV 1.4.6",), (None,)).blind


def test_a_finding_and_its_scanned_row_commit_together(tmp_path: Path) -> None:
    """If recording the finding fails (a kill, a full disk), the message is not marked
    scanned either: the next run scans it again and finds it (never scanned-but-lost)."""
    path = tmp_path / "r.sqlite"
    state, _ = open_state(path)
    state.db.execute(
        "CREATE TRIGGER no_findings BEFORE INSERT ON findings BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        state.found(("/m/cur/x", "/m", "maildir", "x"), ["Bad.Sig"], (1, 5, 10, 20))
    state.db.execute("DROP TRIGGER no_findings")
    state.close()
    state, _ = open_state(path)
    assert not state.file_known(1, 5, 10, 20) and state.findings() == []
    state.close()


def test_last_run_is_read_without_changing_anything(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    assert last_run(str(path)) is None and not path.exists()
    state, _ = open_state(path)
    state.scanned_file(1, 2, 3, 4)
    state.set_last_run({"scanned": 7, "infected": 1})
    state.close()
    assert last_run(str(path)) == {"infected": 1, "scanned": 7}
    state, _ = open_state(path)  # the same signatures: the read changed nothing
    assert state.file_known(1, 2, 3, 4)
    state.close()
