"""``avtool rescan`` against a real clamd of its own (signatures are added and removed here, so
not the session's): what a signature update finds, what the state spares, what a reader's
renames and a writer's changes do, the window, mbox and MH, and bad input one line each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from avtool.cli.app import app
from avtool.config import Config
from avtool.engine import Engine, Failed, Infected
from avtool.rescan import runner as rescan_runner
from avtool.scan.mailbox import Message, Problem
from avtool.scan.worker import Opened, Result, Worker
from tests.support.clamd_harness import REPO, ClamdServer
from tests.support.mailboxes import EICAR, plain, with_attachment
from tests.support.scanning import scan_path

pytestmark = pytest.mark.clamd
cli = CliRunner()
DAY = 86400


@pytest.fixture(scope="module")
def clamd() -> Iterator[ClamdServer]:
    directory = Path(tempfile.mkdtemp(prefix="avr", dir="/tmp"))
    server = ClamdServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Run:
    messages: list[dict[str, Any]]
    problems: list[dict[str, Any]]
    summary: dict[str, Any]
    exit_code: int
    output: str

    @property
    def scanned(self) -> set[str]:
        return {
            os.path.basename(m["path"]) if m["format"] != "mbox" else m["key"]
            for m in self.messages
        }


def rescan(clamd: ClamdServer, state: Path, *args: str) -> Run:
    result = cli.invoke(
        app,
        [
            "rescan", "--json", "--set", f"clamd.backends={clamd.unix_socket}",
            "--set", f"rescan.state={state}", *args,
        ],
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert objects and objects[-1]["type"] == "summary", output
    messages = [o for o in objects if o["type"] == "message"]
    problems = [o for o in objects if o["type"] in ("error", "note")]
    return Run(messages, problems, objects[-1], result.exit_code, output)


def deliver(md: Path, name: str, data: bytes, sub: str = "new", age_days: float = 0) -> Path:
    for d in ("cur", "new", "tmp"):
        (md / d).mkdir(parents=True, exist_ok=True)
    path = md / sub / name
    path.write_bytes(data)
    if age_days:
        when = time.time() - age_days * DAY
        os.utime(path, (when, when))
    return path


def marker_message(marker: bytes) -> bytes:
    return plain("quarterly report", b"Numbers attached.\n" + marker + b"\n")


def new_marker() -> bytes:
    return b"avtool-rescan-marker-" + os.urandom(8).hex().encode()


def reload(clamd: ClamdServer, probe: Path, *, infected: bool) -> None:
    """RELOAD, and wait until ``probe`` scans as ``infected`` (the reload is in the
    background: docs/notes/clamav.md §2)."""
    assert clamd.command("RELOAD") == "RELOADING"
    engine = Engine.from_config(
        Config.resolve(env={}, overrides={"clamd.backends": str(clamd.unix_socket)})
    )
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if isinstance(scan_path(engine, probe), Infected) == infected:
            return
        time.sleep(0.05)
    raise AssertionError(f"clamd did not reload: {probe} infected={infected} expected")


def add_signature(clamd: ClamdServer, name: str, marker: bytes, probe: Path) -> None:
    probe.write_bytes(marker_message(marker))
    clamd.add_signature_file(f"{name}.ndb", f"{name}:0:*:{marker.hex()}\n")
    reload(clamd, probe, infected=True)


def remove_signature(clamd: ClamdServer, name: str, probe: Path) -> None:
    (clamd.db_dir / f"{name}.ndb").unlink()
    reload(clamd, probe, infected=False)


def findings(state: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(state) as db:
        return list(db.execute("SELECT path, names FROM findings ORDER BY id"))


# ---- a signature update ------------------------------------------------------------------------
def test_a_new_signature_finds_exactly_the_message_it_names(
    clamd: ClamdServer, tmp_path: Path
) -> None:
    md, state = tmp_path / "Maildir", tmp_path / "state" / "rescan.sqlite"
    marker = new_marker()
    for i in range(5):
        deliver(md, f"170000000{i}.M1P1.host", plain(f"hello {i}"), sub="cur" if i % 2 else "new")
    target = deliver(md, "1700000009.M1P1.host", marker_message(marker))
    first = rescan(clamd, state, str(md))
    assert (first.exit_code, first.summary["scanned"], first.summary["infected"]) == (0, 6, 0)
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    # made 0700; others may search it (0711) for the last run's summary, never list or write
    assert oct(state.parent.stat().st_mode & 0o777) == "0o711"

    add_signature(clamd, "Avtool-Rescan-New", marker, tmp_path / "probe")
    try:
        found = rescan(clamd, state, str(md))
        assert found.exit_code == 1, found.output
        assert found.summary["scanned"] == 6 and found.summary["infected"] == 1
        [hit] = [m for m in found.messages if m["status"] == "infected"]
        assert hit["path"] == str(target) and hit["names"] == ["Avtool-Rescan-New.UNOFFICIAL"]
        assert hit["subject"] == "quarterly report"  # the same keys as scan --json
        assert findings(state) == [(str(target), '["Avtool-Rescan-New.UNOFFICIAL"]')]

        again = rescan(clamd, state, str(md))
        assert again.exit_code == 0 and again.messages == []
        assert (again.summary["scanned"], again.summary["skipped"]) == (0, 6)
    finally:
        remove_signature(clamd, "Avtool-Rescan-New", tmp_path / "probe")
    # Signatures changed again (a file removed): everything is scanned again; findings stay.
    changed = rescan(clamd, state, str(md))
    assert (changed.summary["scanned"], changed.summary["infected"], changed.exit_code) == (6, 0, 0)
    assert len(findings(state)) == 1


def test_renames_by_readers_are_not_scanned_again(clamd: ClamdServer, tmp_path: Path) -> None:
    md, state = tmp_path / "Maildir", tmp_path / "s.sqlite"
    a = deliver(md, "1700000001.M1P1.host", plain("a"))
    b = deliver(md, "1700000002.M1P1.host", plain("b"), sub="cur")
    c = deliver(md, "1700000003.M1P1.host", plain("c"))
    assert rescan(clamd, state, str(md)).summary["scanned"] == 3
    a.rename(md / "cur" / (a.name + ":2,S"))  # read: new/ -> cur/ with a flag
    flagged = md / "cur" / (b.name + ":2,FS")
    b.rename(flagged)  # a flag change
    folder = md / ".Archive"
    deliver(folder, "placeholder", b"")
    (folder / "new" / "placeholder").unlink()
    c.rename(folder / "cur" / (c.name + ":2,S"))  # moved to another folder
    run = rescan(clamd, state, str(md))
    assert run.messages == [] and run.summary["skipped"] == 3, run.output


def test_changed_messages_are_scanned_again(clamd: ClamdServer, tmp_path: Path) -> None:
    md, state = tmp_path / "Maildir", tmp_path / "s.sqlite"
    grown = deliver(md, "1.M1P1.h", plain("grown"))
    touched = deliver(md, "2.M1P1.h", plain("touched"))
    replaced = deliver(md, "3.M1P1.h", plain("replaced"))
    kept = deliver(md, "4.M1P1.h", plain("kept"))
    assert rescan(clamd, state, str(md)).summary["scanned"] == 4
    with grown.open("ab") as f:
        f.write(b"one more line\n")
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, new mtime
    st = replaced.stat()
    other = replaced.with_name("3.copy")
    other.write_bytes(replaced.read_bytes())
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime, new inode
    other.replace(replaced)
    run = rescan(clamd, state, str(md))
    assert run.scanned == {grown.name, touched.name, replaced.name}, run.output
    assert run.summary["skipped"] == 1 and kept.exists()


def test_the_window(clamd: ClamdServer, tmp_path: Path) -> None:
    md, state = tmp_path / "Maildir", tmp_path / "s.sqlite"
    deliver(md, "1.M1P1.h", plain("today"))
    deliver(md, "2.M1P1.h", plain("last week"), sub="cur", age_days=7)
    deliver(md, "3.M1P1.h", plain("last month"), sub="cur", age_days=30)
    default = rescan(clamd, state, str(md))
    assert default.scanned == {"1.M1P1.h", "2.M1P1.h"}
    assert default.summary["outside_window"] == 1
    short = rescan(clamd, state, "--days", "3", str(md))
    assert short.messages == [] and short.summary["outside_window"] == 2
    wide = rescan(clamd, state, "--days", "60", str(md))
    assert wide.scanned == {"3.M1P1.h"} and wide.summary["skipped"] == 2


def from_line(age_days: float) -> bytes:
    when = time.gmtime(time.time() - age_days * DAY)
    return b"From alice@example.com " + time.strftime("%a %b %e %H:%M:%S %Y", when).encode() + b"\n"


def test_mbox(clamd: ClamdServer, tmp_path: Path) -> None:
    box, state = tmp_path / "inbox", tmp_path / "s.sqlite"
    box.write_bytes(
        from_line(1) + plain("one") + b"\n"
        + from_line(40) + plain("old") + b"\n"
        + from_line(2) + with_attachment("virus", "e.com", EICAR) + b"\n"
    )  # fmt: skip
    first = rescan(clamd, state, str(box))
    assert first.scanned == {"1", "3"} and first.summary["outside_window"] == 1
    assert first.exit_code == 1
    assert findings(state) == [(str(box), '["Eicar-Test-Signature.Body.UNOFFICIAL"]')]
    # Unchanged (same inode, size, mtime): not read at all. Proof: a From_ line changed
    # behind a restored mtime goes unseen (read, its check would differ: scanned again).
    st = box.stat()
    data = box.read_bytes()
    box.write_bytes(data.replace(b"From alice@", b"From alicf@", 1))
    os.utime(box, ns=(st.st_atime_ns, st.st_mtime_ns))
    unread = rescan(clamd, state, str(box))
    assert unread.messages == [] and unread.summary["skipped"] == 2, unread.output
    assert unread.summary["outside_window"] == 1
    # New mail appended: read again; the new message is scanned, and the one whose From_
    # line changed; the third is known.
    with box.open("ab") as f:
        f.write(from_line(0) + plain("new") + b"\n")
    appended = rescan(clamd, state, str(box))
    assert appended.scanned == {"1", "4"} and appended.summary["skipped"] == 1, appended.output
    assert len(findings(state)) == 1


def test_mh(clamd: ClamdServer, tmp_path: Path) -> None:
    folder, state = tmp_path / "inbox", tmp_path / "s.sqlite"
    folder.mkdir()
    (folder / ".mh_sequences").write_text("unseen: 2\n")
    (folder / "1").write_bytes(plain("one"))
    (folder / "2").write_bytes(with_attachment("virus", "e.com", EICAR))
    first = rescan(clamd, state, str(folder))
    assert first.scanned == {"1", "2"} and first.exit_code == 1
    (folder / "3").write_bytes(plain("three"))
    (folder / "1").rename(folder / "4")  # refile keeps the inode
    second = rescan(clamd, state, str(folder))
    assert second.scanned == {"3"} and second.summary["skipped"] == 2


# ---- bad input -----------------------------------------------------------------------------------
def test_corrupt_state_is_moved_aside_and_rebuilt(clamd: ClamdServer, tmp_path: Path) -> None:
    md, state = tmp_path / "Maildir", tmp_path / "s.sqlite"
    deliver(md, "1.M1P1.h", plain("one"))
    rescan(clamd, state, str(md))
    state.write_bytes(b"this is no database " * 300)
    run = rescan(clamd, state, str(md))
    assert run.exit_code == 0 and run.summary["scanned"] == 1
    [line] = run.problems
    assert line["type"] == "note" and "not a usable database; moved to" in line["text"]
    assert [p.name for p in tmp_path.glob("s.sqlite.corrupt-*")], "moved aside, not deleted"
    assert rescan(clamd, state, str(md)).summary["skipped"] == 1


def test_unreadable_mailbox_is_one_line_and_the_run_goes_on(
    clamd: ClamdServer, tmp_path: Path
) -> None:
    good, state = tmp_path / "good", tmp_path / "s.sqlite"
    deliver(good, "1.M1P1.h", plain("one"))
    run = rescan(clamd, state, str(tmp_path / "missing"), str(good))
    assert run.summary["scanned"] == 1 and run.exit_code == 2
    assert run.problems == [
        {"type": "error", "path": str(tmp_path / "missing"), "text": "no such file or directory"}
    ]


def test_a_message_vanishing_mid_run(
    clamd: ClamdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md, state = tmp_path / "Maildir", tmp_path / "s.sqlite"
    gone = deliver(md, "1.M1P1.h", plain("gone"))
    deliver(md, "2.M1P1.h", plain("stays"))

    class Deleting(Worker):
        def open(self, m: Message) -> Opened | Result | Problem:
            if m.path == str(gone):
                gone.unlink()  # deleted by its owner between the listing and the scan
            return super().open(m)

    monkeypatch.setattr(rescan_runner, "Worker", Deleting)
    run = rescan(clamd, state, str(md))
    assert run.exit_code == 0 and run.scanned == {"2.M1P1.h"}
    assert run.problems == [
        {
            "type": "note",
            "path": f"{md} [1.M1P1.h]",
            "text": "gone before it was scanned (deleted meanwhile)",
        }
    ]


def test_a_users_maildir_link_is_not_followed(clamd: ClamdServer, tmp_path: Path) -> None:
    """rescan.roots are in directories users own: ~bob/Maildir -> ~alice/Maildir is not read
    as bob's mail (safedir's rule), and the other roots are scanned."""
    home = tmp_path / "home"
    alice, bob = home / "alice", home / "bob"
    deliver(alice / "Maildir", "1.M1P1.h", plain("alice's"))
    bob.mkdir()
    os.chown(bob, 65534, 65534)  # nobody's home
    (bob / "Maildir").symlink_to(alice / "Maildir")
    os.lchown(bob / "Maildir", 65534, 65534)
    run = rescan(clamd, tmp_path / "s.sqlite", "--set", f"rescan.roots={home}/*/Maildir")
    assert run.scanned == {"1.M1P1.h"} and run.messages[0]["mailbox"] == str(alice / "Maildir")
    [line] = run.problems
    assert line["path"] == str(bob / "Maildir") and line["text"].startswith("not scanned: ")


# ---- killed half way ---------------------------------------------------------------------------
def test_sigkill_half_way_then_resume(clamd: ClamdServer, tmp_path: Path) -> None:
    """SIGKILL while scanning: the state is intact, every committed finding is kept, and the
    next run scans exactly what was not committed (a finding is never scanned twice)."""
    md, state = tmp_path / "Maildir", tmp_path / "s.sqlite"
    total, infected = 4000, set()
    virus = with_attachment("virus", "e.com", EICAR)
    for i in range(total):
        name = f"{1700000000 + i}.M{i}P1.host"
        bad = i % 10 == 3
        deliver(md, name, virus if bad else plain(f"message {i}"), sub="cur")
        if bad:
            infected.add(str(md / "cur" / name))
    args = [
        sys.executable, "-m", "avtool", "rescan", "--json", "--days", "0",
        "--set", f"clamd.backends={clamd.unix_socket}", "--set", f"rescan.state={state}", str(md),
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and proc.poll() is None:
            if state.exists() and _count(state, "findings") >= 100:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        committed = db.execute("SELECT count(*) FROM files").fetchone()[0]
        kept = [p for (p,) in db.execute("SELECT path FROM findings")]
    assert 100 <= len(kept) < len(infected) and committed < total
    assert len(set(kept)) == len(kept) and set(kept) <= infected

    resumed = rescan(clamd, state, "--days", "0", str(md))
    assert resumed.summary["scanned"] == total - committed, resumed.summary
    assert resumed.summary["skipped"] == committed
    assert not {m["path"] for m in resumed.messages} & set(kept)
    final = [p for p, _ in findings(state)]
    assert sorted(final) == sorted(infected)  # every one found once: none lost, none twice


def _count(state: Path, table: str) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=0.1) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
    except sqlite3.Error:
        return 0


def test_a_failed_scan_is_tried_again_next_run(
    clamd: ClamdServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md, state = tmp_path / "Maildir", tmp_path / "s.sqlite"
    flaky = deliver(md, "1.M1P1.h", plain("flaky"))
    deliver(md, "2.M1P1.h", plain("fine"))

    class Failing(Worker):
        def open(self, m: Message) -> Opened | Result | Problem:
            if m.path == str(flaky):
                return Result(m, Failed("clamd went away (injected)"))
            return super().open(m)

    with monkeypatch.context() as patch:
        patch.setattr(rescan_runner, "Worker", Failing)
        failed = rescan(clamd, state, str(md))
    assert failed.exit_code == 2 and failed.summary["failed"] == 1
    again = rescan(clamd, state, str(md))
    assert again.scanned == {flaky.name} and again.summary["skipped"] == 1


def test_rescan_roots_with_no_mail_are_not_errors(clamd: ClamdServer, tmp_path: Path) -> None:
    """A user with an empty ~/Maildir is no error for the rescan's own roots (cron would
    mail it every night); named on the command line, it is one, as for scan."""
    home = tmp_path / "home"
    deliver(home / "alice" / "Maildir", "1.M1P1.h", plain("alice's"))
    for sub in ("cur", "new", "tmp"):
        (home / "bob" / "Maildir" / sub).mkdir(parents=True)
    found = rescan(clamd, tmp_path / "s.sqlite", "--set", f"rescan.roots={home}/*/Maildir")
    assert (found.exit_code, found.problems, found.scanned) == (0, [], {"1.M1P1.h"})
    named = rescan(clamd, tmp_path / "s.sqlite", str(home / "bob" / "Maildir"))
    assert named.exit_code == 2 and [p["type"] for p in named.problems] == ["error"]
