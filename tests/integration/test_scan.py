"""scanner.run() against the real clamd of the session: a Maildir, an mbox and an MH folder with
known infections in every encoding, all the clamav-testfiles samples attached, --explain, and
--move-to. Signature names end in ``.UNOFFICIAL`` (docs/notes/clamav.md §1): assert on the
verdict."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from avtool.engine import Engine, Infected, Unchecked
from avtool.scan import scanner
from avtool.scan.mailbox import Moved, Problem
from avtool.scan.scanner import ClamdUnreachable, Options, Result, clamd_threads, default_jobs, run
from tests.conftest import MakeConfig
from tests.support import evasion
from tests.support.clamd_harness import ClamdServer
from tests.support.dirs import public_dir
from tests.support.mailboxes import (
    EICAR,
    Sample,
    attached_testfiles,
    maildir_of,
    mbox_of,
    mh_of,
    plain,
    samples,
    snapshot,
)

pytestmark = pytest.mark.clamd


@dataclass
class Recorder:
    """A Report that keeps every event."""

    results: list[Result] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    moves: list[Moved] = field(default_factory=list)
    totals: list[tuple[int, int]] = field(default_factory=list)

    def total(self, messages: int, size: int) -> None:
        self.totals.append((messages, size))

    def result(self, result: Result) -> None:
        self.results.append(result)

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)

    def moved(self, moved: Moved) -> None:
        self.moves.append(moved)

    def infected(self) -> set[tuple[str, str]]:
        return {
            (r.message.mailbox, r.message.key)
            for r in self.results
            if isinstance(r.verdict, Infected)
        }


@dataclass
class Boxes:
    root: Path
    expected: dict[tuple[str, str], Sample]  # (mailbox, key) -> sample

    @property
    def paths(self) -> list[str]:
        return sorted({mailbox for mailbox, _ in self.expected})

    def infected(self) -> set[tuple[str, str]]:
        return {k for k, s in self.expected.items() if s.infected}


def build(root: Path) -> Boxes:
    chosen = samples()
    expected: dict[tuple[str, str], Sample] = {}
    for name, keys in (
        ("Maildir", maildir_of(root / "Maildir", chosen)),
        ("mbox", mbox_of(root / "mbox", chosen, ["RO", "", "O", "RO", "", "", "R", "", ""])),
        ("Mail/inbox", mh_of(root / "Mail" / "inbox", chosen, "unseen: 1-2\nflagged: 4\n")),
    ):
        expected.update({(str(root / name), key): s for key, s in keys.items()})
    return Boxes(root, expected)


@pytest.fixture
def boxes(tmp_path: Path) -> Boxes:
    return build(tmp_path)


def test_every_format_every_encoding(engine_config: MakeConfig, boxes: Boxes) -> None:
    rec = Recorder()
    summary = run(engine_config(), boxes.paths, rec)
    assert rec.problems == []
    assert rec.infected() == boxes.infected()
    assert len(rec.results) == summary.scanned == len(boxes.expected) == 27
    assert (summary.infected, summary.clean, summary.unchecked, summary.failed) == (15, 12, 0, 0)
    assert summary.exit_code == 1 and summary.jobs >= 1
    assert summary.bytes == sum(r.message.size for r in rec.results)
    for r in rec.results:
        if isinstance(r.verdict, Infected):
            sample = boxes.expected[(r.message.mailbox, r.message.key)]
            assert r.sender == "Alice <alice@example.com>"
            assert r.subject == sample.data.split(b"Subject: ")[1].split(b"\n")[0].decode()
        else:
            assert r.sender is None and r.subject is None  # not read for clean mail


def test_every_clamav_testfile_attached_is_found(engine_config: MakeConfig, tmp_path: Path) -> None:
    chosen = attached_testfiles()
    assert len(chosen) == 43  # 44 testfiles, less the one clamd misses inside mail
    keys = maildir_of(tmp_path / "Maildir", chosen)
    rec = Recorder()
    summary = run(engine_config(), [str(tmp_path / "Maildir")], rec)
    assert summary.infected == 43 and summary.exit_code == 1
    assert {r.message.key for r in rec.results} == set(keys)


def test_explain_names_the_part_in_each_encoding(engine_config: MakeConfig, boxes: Boxes) -> None:
    rec = Recorder()
    run(engine_config(), [str(boxes.root / "mbox")], rec, options=Options(explain=True))
    parts = {r.message.key: r.parts for r in rec.results if isinstance(r.verdict, Infected)}
    for (mailbox, key), sample in boxes.expected.items():
        if mailbox.endswith("mbox") and sample.infected:
            found = parts[key]
            assert found is not None and [p.number for p in found] == [sample.part], sample.name
    assert all(r.parts is None for r in rec.results if not isinstance(r.verdict, Infected))


def test_nothing_changes_without_move_to(engine_config: MakeConfig, boxes: Boxes) -> None:
    def state() -> dict[str, object]:
        files = snapshot(boxes.root)
        times = {p: os.stat(p).st_mtime_ns for p in files}
        return {"files": files, "times": times, "dirs": sorted(os.walk(boxes.root))}

    before = state()
    run(engine_config(), boxes.paths, Recorder(), options=Options(explain=True))
    assert state() == before


def test_move_to_quarantine(engine_config: MakeConfig, boxes: Boxes, tmp_path: Path) -> None:
    q = tmp_path / "quarantine"
    before = snapshot(boxes.root)
    rec = Recorder()
    summary = run(engine_config(), boxes.paths, rec, options=Options(move_to=str(q)))
    assert rec.problems == []
    assert summary.moved == len(rec.moves) == 15 and summary.exit_code == 1
    assert {(m.message.mailbox, m.message.key) for m in rec.moves} == boxes.infected()
    # A rescan finds nothing left to move, and every clean message is still where it was.
    again = Recorder()
    assert run(engine_config(), boxes.paths, again).exit_code == 0
    assert again.infected() == set() and len(again.results) == 12
    # Each infected message is in the quarantine exactly once, with its bytes.
    moved = snapshot(q)
    assert len(moved) == 15
    for m in rec.moves:
        assert Path(m.to).read_bytes() == before[m.message.path] or m.message.format == "mbox"
        if m.message.format == "maildir":  # same name, so same subdir and flags
            assert os.path.relpath(m.to, q) == os.path.relpath(m.message.path, m.message.mailbox)
    mbox_moves = {
        m.message.key: os.path.relpath(m.to, q) for m in rec.moves if m.message.format == "mbox"
    }
    assert mbox_moves["1"].startswith("cur/") and mbox_moves["1"].endswith(":2,S")  # RO
    assert mbox_moves["2"].startswith("new/")  # no Status
    assert mbox_moves["3"].endswith(":2,")  # O: seen, not read
    mh_moves = {
        m.message.key: os.path.relpath(m.to, q) for m in rec.moves if m.message.format == "mh"
    }
    assert mh_moves["1"].startswith("new/")  # unseen
    assert mh_moves["4"].endswith(":2,FS")  # flagged, seen


def test_quarantine_inside_the_scanned_maildir_is_not_rescanned(
    engine_config: MakeConfig, boxes: Boxes
) -> None:
    md = str(boxes.root / "Maildir")
    q = str(boxes.root / "Maildir" / ".Quarantine")
    first = run(engine_config(), [md], Recorder(), options=Options(move_to=q))
    assert first.moved == 5
    again = Recorder()
    second = run(engine_config(), [md], again, options=Options(move_to=q))
    assert second.infected == 0 and second.moved == 0 and second.scanned == 4


def test_messages_over_max_size_are_unchecked(engine_config: MakeConfig, tmp_path: Path) -> None:
    big = plain("big", b"x" * 5000 + b"\n")
    mbox_of(tmp_path / "mbox", [Sample("big", big, False)])
    maildir_of(tmp_path / "Maildir", [Sample("big", big, False)])
    rec = Recorder()
    summary = run(
        engine_config(max_size=4096), [str(tmp_path / "mbox"), str(tmp_path / "Maildir")], rec
    )
    assert summary.unchecked == 2 and summary.exit_code == 0
    assert all(
        isinstance(r.verdict, Unchecked) and r.verdict.reason.startswith("too large")
        for r in rec.results
    )


def test_a_fragment_is_unchecked_not_clean(engine_config: MakeConfig, tmp_path: Path) -> None:
    """clamd answers OK for a message/partial without looking (courier/unscannable.py): the
    scan reports it unchecked, in an mbox (a range of a bigger file) as in a Maildir."""
    fragments = [
        Sample(name, build(EICAR), False)
        for name, build in evasion.FRAGMENTS.items()
        if name != "crlf"  # an mbox of CRLF lines is another test's matter
    ]
    mbox_of(tmp_path / "mbox", [Sample("ok", plain("ok"), False), *fragments])
    maildir_of(tmp_path / "Maildir", fragments)
    rec = Recorder()
    summary = run(engine_config(), [str(tmp_path / "mbox"), str(tmp_path / "Maildir")], rec)
    assert summary.clean == 1 and summary.unchecked == 2 * len(fragments), [
        (r.message.where, r.verdict) for r in rec.results if not isinstance(r.verdict, Unchecked)
    ]
    assert summary.exit_code == 0
    assert all(
        r.verdict.reason.startswith("message/")
        for r in rec.results
        if isinstance(r.verdict, Unchecked)
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A dir clamd's own user can read (transfer scan); tmp_path's parents are 0700."""
    with public_dir("avs") as d:
        yield d


def test_transfer_scan_still_scans_mbox_messages(
    engine_config: MakeConfig, shared_dir: Path
) -> None:
    # SCAN needs a path; an mbox message is a byte range: it goes by FILDES whatever the key says.
    chosen = samples()
    mbox_of(shared_dir / "mbox", chosen)
    maildir_of(shared_dir / "Maildir", chosen)
    for path in [shared_dir / "mbox", *(shared_dir / "Maildir").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    rec = Recorder()
    summary = run(
        engine_config(transfer="scan"), [str(shared_dir / "mbox"), str(shared_dir / "Maildir")], rec
    )
    assert rec.problems == [] and summary.failed == 0
    assert summary.infected == 10


def test_default_jobs_fit_clamd_threads_and_cpus(
    engine_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine.from_config(engine_config())
    assert clamd_threads(engine) == 4  # the harness's MaxThreads
    assert default_jobs(engine) == min(4, 4 * (os.cpu_count() or 1))
    # A clamd with many threads: up to 4 per CPU for the loop (FILDES), 2 for the pool.
    monkeypatch.setattr(scanner, "clamd_threads", lambda engine: 64)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_jobs(engine) == 8
    assert default_jobs(Engine.from_config(engine_config(transfer="scan"))) == 4


def test_no_clamd_fails_before_scanning(engine_config: MakeConfig, boxes: Boxes) -> None:
    with pytest.raises(ClamdUnreachable, match="no clamd answers: /nonexistent/c.sock: ") as e:
        run(engine_config("/nonexistent/c.sock"), boxes.paths, Recorder())
    assert e.value.exit_code == 2


def test_clamd_stops_mid_scan_every_message_is_failed(
    boxes: Boxes, tmp_path: Path, engine_config: MakeConfig
) -> None:
    server = ClamdServer(Path(tempfile.mkdtemp(prefix="avd", dir="/tmp")))
    server.start()
    try:
        cfg = engine_config(str(server.unix_socket), **{"scan.jobs": 1})

        class StopAfterFirst(Recorder):
            def result(self, result: Result) -> None:
                super().result(result)
                if len(self.results) == 1:
                    server.stop()

        rec = StopAfterFirst()
        summary = run(cfg, boxes.paths, rec)
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    assert summary.failed >= 20 and summary.exit_code == 2
    assert summary.scanned == 27  # every message still has its line
