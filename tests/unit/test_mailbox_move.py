"""Moving into the quarantine Maildir: flags kept per format, atomic renames, the copy path
across filesystems, and every message in exactly one place when a step fails."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avtool.safedir import Unsafe
from avtool.scan.mailbox import Message, Moved, OpenFile, Problem, move, open_quarantine, walk
from avtool.scan.mailbox import mbox as M
from avtool.scan.mailbox.maildir import Maildir, relocate
from avtool.scan.mailbox.message import SHOWN, capped, printable, sender_and_subject
from avtool.scan.mailbox.mh import (
    add_to_sequences,
    maildir_flags,
    member_of,
    sequences,
    with_number,
)
from tests.support.mailboxes import maildir, mbox_bytes, plain, snapshot


def messages(*paths: Path) -> list[Message]:
    return [m for m in walk([str(p) for p in paths]) if isinstance(m, Message)]


def victims(found: list[Message]) -> list[tuple[Message, str]]:
    out = []
    for m in found:
        digest = ""
        if m.source is not None:
            digest = M.digest(m.source.fd, m.offset, m.size)
        out.append((m, digest))
    return out


def test_maildir_messages_keep_name_subdir_and_flags(tmp_path: Path) -> None:
    md = maildir(
        tmp_path / "Maildir",
        [("new", "1.a.h", plain("new one")), ("cur", "2.b.h:2,FRS", plain("flagged"))],
    )
    q = open_quarantine(str(tmp_path / "q"))
    events = list(move(q, victims(messages(md)), lock_timeout=1))
    assert all(isinstance(e, Moved) for e in events)
    assert sorted(os.listdir(tmp_path / "q" / "new")) == ["1.a.h"]
    assert sorted(os.listdir(tmp_path / "q" / "cur")) == ["2.b.h:2,FRS"]
    assert snapshot(md) == {}  # moved, not copied
    assert oct(os.stat(tmp_path / "q").st_mode & 0o777) == "0o700"


def test_name_taken_in_quarantine_gets_a_new_unique_name(tmp_path: Path) -> None:
    md = maildir(tmp_path / "Maildir", [("cur", "1.a.h:2,S", plain("mine"))])
    q = maildir(tmp_path / "q", [("cur", "1.a.h:2,S", plain("already there"))])
    [event] = move(Maildir(str(q)), victims(messages(md)), lock_timeout=1)
    assert isinstance(event, Moved) and not event.to.endswith("/1.a.h:2,S")
    assert event.to.endswith(":2,S") and Path(event.to).read_bytes() == plain("mine")
    assert (q / "cur" / "1.a.h:2,S").read_bytes() == plain("already there")


def test_mh_flags_from_sequences(tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for n in (1, 2, 3):
        (folder / str(n)).write_bytes(plain(f"mh {n}"))
    (folder / ".mh_sequences").write_text("unseen: 2-3\nflagged: 1 3\nreplied: 1\n")
    assert {name: s.ranges for name, s in sequences(str(folder)).items()} == {
        "unseen": ((2, 3),),
        "flagged": ((1, 1), (3, 3)),
        "replied": ((1, 1),),
    }
    assert [maildir_flags(k, sequences(str(folder))) for k in "123"] == ["SFR", "", "F"]
    q = open_quarantine(str(tmp_path / "q"))
    events = list(move(q, victims(messages(folder)), lock_timeout=1))
    flags = sorted(os.path.basename(e.to).partition(":")[2] for e in events if isinstance(e, Moved))
    assert flags == ["", "2,F", "2,FRS"]  # unseen and unflagged: new/, no info
    assert len(os.listdir(tmp_path / "q" / "new")) == 1


@pytest.mark.parametrize(
    ("raw", "names", "expected"),
    [
        (b"", ["unseen"], b"unseen: 9\n"),
        (b"cur: 3\nunseen: 1-3", ["unseen"], b"cur: 3\nunseen: 1-3 9\n"),  # no last newline
        (b"unseen: 1\r\nflagged: 2\r\n", ["unseen"], b"unseen: 1 9\nflagged: 2\r\n"),
        (b"mine: 1\n  2 3\nother: 4\n", ["mine", "new"], b"mine: 1\n  2 3 9\nother: 4\nnew: 9\n"),
        (b"unseen: 1\nunseen: 5\n", ["unseen", "unseen"], b"unseen: 1\nunseen: 5 9\n"),
        (b"\xff\xfe junk\nflagged:\n", ["flagged"], b"\xff\xfe junk\nflagged: 9\n"),
    ],
)
def test_a_number_joins_sequences_and_nothing_else_changes(
    raw: bytes, names: list[str], expected: bytes, tmp_path: Path
) -> None:
    new = with_number(raw, 9, names)
    assert new == expected
    (tmp_path / ".mh_sequences").write_bytes(new)
    seqs = sequences(str(tmp_path))
    assert all(9 in seqs[n] for n in names)


def test_a_sequences_file_too_big_to_read_whole_is_left_whole(tmp_path: Path) -> None:
    """Written back is only what was read: a file past the bound (grown meanwhile) is refused,
    never cut to the bound. Red without the check made under the lock."""
    huge = b"unseen: 1\n" + b"mine: " + b"7 " * (1 << 19) + b"\n"
    (tmp_path / ".mh_sequences").write_bytes(huge)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError, match="over 1048576 bytes; not changed"):
            add_to_sequences(fd, 9, ["unseen"], timeout=1)
        assert (tmp_path / ".mh_sequences").read_bytes() == huge
        (tmp_path / ".mh_sequences").write_bytes(b"unseen: 1\n")
        add_to_sequences(fd, 9, ["unseen"], timeout=1)
        assert (tmp_path / ".mh_sequences").read_bytes() == b"unseen: 1 9\n"
    finally:
        os.close(fd)


def test_member_of_leaves_out_the_current_message_and_odd_names(tmp_path: Path) -> None:
    (tmp_path / ".mh_sequences").write_text("cur: 2\nunseen: 1-3\nx y: 2\nflagged: 1\nseen: 2\n")
    assert member_of("2", sequences(str(tmp_path))) == ["unseen", "seen"]


def test_mbox_messages_keep_status_as_flags(tmp_path: Path) -> None:
    box = tmp_path / "bob"
    box.write_bytes(mbox_bytes([plain("read"), plain("unread"), plain("old")], ["RO", "", "O"]))
    q = open_quarantine(str(tmp_path / "q"))
    found = messages(box)
    events = list(move(q, victims(found), lock_timeout=1))
    assert [type(e) for e in events] == [Moved, Moved, Moved]
    names = {e.message.key: os.path.relpath(e.to, q.path) for e in events if isinstance(e, Moved)}
    assert names["1"].startswith("cur/") and names["1"].endswith(":2,S")
    assert names["2"].startswith("new/") and ":" not in names["2"]
    assert names["3"].startswith("cur/") and names["3"].endswith(":2,")
    assert box.read_bytes() == b""


def test_stdin_is_never_moved(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_TMPFILE | os.O_RDWR)
    os.write(fd, plain("x"))
    m = Message("-", "file", "", "-", 10, source=OpenFile(fd))
    [event] = move(open_quarantine(str(tmp_path / "q")), [(m, "")], lock_timeout=1)
    assert event == Problem("-", "not moved: standard input is not a mailbox", error=False)


def test_across_filesystems_copies_fsyncs_and_unlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = maildir(tmp_path / "Maildir", [("cur", "1.a.h:2,S", plain("far away"))])
    src = md / "cur" / "1.a.h:2,S"
    os.chmod(src, 0o640)
    os.utime(src, (1_000_000_000, 1_000_000_000))
    monkeypatch.setattr(os, "link", _exdev_for_links(os.link))
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    [event] = move(open_quarantine(str(tmp_path / "q")), victims(messages(md)), lock_timeout=1)
    assert isinstance(event, Moved) and event.to == str(tmp_path / "q" / "cur" / "1.a.h:2,S")
    moved = Path(event.to)
    assert moved.read_bytes() == plain("far away") and not src.exists()
    assert moved.stat().st_mode & 0o777 == 0o640 and moved.stat().st_mtime == 1_000_000_000
    assert len(synced) >= 3  # the copy, the quarantine dir, the source dir
    assert os.listdir(tmp_path / "q" / "tmp") == []


def test_across_filesystems_failed_unlink_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = maildir(tmp_path / "Maildir", [("cur", "1.a.h:2,S", plain("stays"))])
    src = md / "cur" / "1.a.h:2,S"
    monkeypatch.setattr(os, "link", _exdev_for_links(os.link))
    real_unlink = os.unlink

    def unlink(path: str, *, dir_fd: int | None = None) -> None:
        in_source = dir_fd is not None and os.fstat(dir_fd).st_ino == src.parent.stat().st_ino
        if str(path) == src.name and in_source:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink)
    [event] = move(open_quarantine(str(tmp_path / "q")), victims(messages(md)), lock_timeout=1)
    assert isinstance(event, Problem) and event.text == "not moved: permission denied"
    assert src.read_bytes() == plain("stays")
    assert snapshot(tmp_path / "q") == {}  # exactly one place


def _exdev_for_links(real: object) -> object:
    """os.link as across filesystems for the move's link of the scanned file by descriptor."""

    def link(a: str, b: str, **kwargs: object) -> None:
        if str(a).startswith("/proc/self/fd/"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(a, b, **kwargs)  # type: ignore[operator]

    return link


def test_interrupted_batch_leaves_each_message_in_exactly_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = maildir(tmp_path / "Maildir", [("cur", f"{n}.a.h:2,S", plain(f"m{n}")) for n in range(5)])
    before = {Path(p).name: data for p, data in snapshot(md).items()}
    real_rename = os.rename
    calls = {"n": 0}

    def rename(a: str, b: str, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_rename(a, b, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        list(move(open_quarantine(str(tmp_path / "q")), victims(messages(md)), lock_timeout=1))
    after = snapshot(md, tmp_path / "q")
    assert sorted(Path(p).name for p in after) == sorted(before)  # each name exactly once
    assert {Path(p).name: data for p, data in after.items()} == before
    assert len(os.listdir(tmp_path / "q" / "cur")) == 2


def test_renamed_by_a_reader_since_the_scan_is_found_again(tmp_path: Path) -> None:
    md = maildir(tmp_path / "Maildir", [("new", "1.a.h", plain("x"))])
    [m] = messages(md)
    os.rename(md / "new" / "1.a.h", md / "cur" / "1.a.h:2,S")  # the reader opened it
    again = relocate(m)
    assert again is not None and again.path == str(md / "cur" / "1.a.h:2,S")
    [event] = move(open_quarantine(str(tmp_path / "q")), [(m, "")], lock_timeout=1)
    assert isinstance(event, Moved) and event.to.endswith("/cur/1.a.h:2,S")


def test_gone_message_is_a_problem(tmp_path: Path) -> None:
    md = maildir(tmp_path / "Maildir", [("new", "1.a.h", plain("x"))])
    [m] = messages(md)
    os.unlink(m.path)
    [event] = move(open_quarantine(str(tmp_path / "q")), [(m, "")], lock_timeout=1)
    assert event == Problem(m.where, "not moved: no such file or directory")


def test_copies_from_an_mbox_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    box = tmp_path / "bob"
    box.write_bytes(mbox_bytes([plain("one"), plain("two")], ["RO", ""]))
    os.chmod(box, 0o644)
    old = os.umask(0o022)
    try:
        q = open_quarantine(str(tmp_path / "q"))
        events = list(move(q, victims(messages(box)), lock_timeout=1))
    finally:
        os.umask(old)
    moved = [Path(e.to) for e in events if isinstance(e, Moved)]
    assert len(moved) == 2
    assert {oct(p.stat().st_mode & 0o777) for p in moved} == {"0o600"}
    for d in ("", "tmp", "new", "cur"):
        assert oct((tmp_path / "q" / d).stat().st_mode & 0o777) == "0o700"


def test_an_existing_wider_target_is_tightened(tmp_path: Path) -> None:
    q = maildir(tmp_path / "q", [("cur", "1.a.h:2,S", plain("kept"))])
    for d in (q, q / "tmp", q / "new", q / "cur"):
        d.chmod(0o755)
    Maildir(str(q)).close()
    for d in (q, q / "tmp", q / "new", q / "cur"):
        assert oct(d.stat().st_mode & 0o777) == "0o700", d
    assert (q / "cur" / "1.a.h:2,S").read_bytes() == plain("kept")


@pytest.mark.parametrize("sub", ["", "cur"])
def test_a_target_others_can_write_is_refused(tmp_path: Path, sub: str) -> None:
    q = maildir(tmp_path / "q", [])
    (q / sub).chmod(0o777)
    with pytest.raises(Unsafe, match="is writable by every user"):
        Maildir(str(q))
    assert oct((q / sub).stat().st_mode & 0o777) == "0o777"  # refused, not changed


def test_a_target_subdir_that_is_a_link_is_refused(tmp_path: Path) -> None:
    q = maildir(tmp_path / "q", [])
    (tmp_path / "elsewhere").mkdir()
    (q / "new").rmdir()
    (q / "new").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Unsafe, match="new is a symbolic link"):
        Maildir(str(q))


def test_quarantine_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "q").write_text("")
    with pytest.raises(NotADirectoryError):
        open_quarantine(str(tmp_path / "q"))


# ---- header fields for the report ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("head", "sender", "subject"),
    [
        (b"From: Alice <a@x>\nSubject: Hi\n\n", "Alice <a@x>", "Hi"),
        (b"Subject: =?utf-8?q?caf=C3=A9?=\n\n", None, "café"),
        (b"Subject: a\n  folded\n  line\n\n", None, "a folded line"),
        (b"Subject: \x1b[31mred\x1b]0;title\x07\n\n", None, "?[31mred?]0;title?"),
        (b"From: \xff\xfe <b@x>\n\n", "\ufffd\ufffd <b@x>", None),
        (b"From: =?bogus?q?x?= <c@x>\n\n", "x <c@x>", None),  # unknown charset: lenient
        (b"X-Other: y\n\n", None, None),
    ],
)
def test_sender_and_subject(head: bytes, sender: str | None, subject: str | None) -> None:
    assert sender_and_subject(head) == (sender, subject)


LONG_UNITS = [b"\\", b",", b".", b"=?utf-8?q?caf=C3=A9?= ", b'"a\\" <a@b>, ', b"a@b.c, "]


@pytest.mark.parametrize("unit", LONG_UNITS)
def test_a_60k_from_is_shown_fast(unit: bytes) -> None:
    """The email package is quadratic on some fields: a 60 KB From: of backslashes took 23 s
    per message of a scan report. Only the first DECODE_LIMIT characters are decoded."""
    value = unit * (60_000 // len(unit))
    head = b"From: " + value + b"\nSubject: " + value + b"\n\n"
    started = time.monotonic()
    sender, subject = sender_and_subject(head)
    assert time.monotonic() - started < 0.5
    assert sender is not None and subject is not None
    assert len(sender) <= SHOWN and sender.endswith("…")


def test_long_fields_still_decode_right() -> None:
    word = b"=?utf-8?q?caf=C3=A9?="
    folded = b"Subject: " + b"\n ".join([word] * 400) + b"\n"  # 9 KB, folded, encoded
    sender, subject = sender_and_subject(
        b"From: =?utf-8?b?QW5kcsOp?= <andre@example.com>\n" + folded + b"\n"
    )
    assert sender == "André <andre@example.com>"
    assert subject is not None and subject.startswith("cafécafécafé") and subject.endswith("…")
    assert "=?" not in subject  # the cut fell between encoded words, not inside one
    assert capped("a\n b\tc", 10) == ("a b c", False)
    assert capped("x " * 2000, 100) == ("x " * 49 + "x", True)


def test_printable_cuts_long_text() -> None:
    assert printable("x" * 500) == "x" * 199 + "…"
    assert printable("a\u202eb") == "a?b"  # a bidi override would reorder the line


HUGE = (
    "unseen: 1-2 4-1000000000\nflagged: 1000000001 7-5 x -3 99999999999999999999999\n"
    "replied: 2\n 3 1-1000000000\ncur: 3\n"
)  # reversed, junk and 23 digits: not numbers; a continuation line joins "replied"


def test_mh_huge_sequence_ranges_stay_ranges(tmp_path: Path) -> None:
    """``unseen: 1-1000000000`` made root's scan build a set of a billion numbers (out of
    memory). In a child limited to 512 MB of address space: fast, small, flags right."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / ".mh_sequences").write_text(HUGE)
    child = (
        "import resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n"
        "from avtool.scan.mailbox.mh import maildir_flags, sequences\n"
        "started = time.monotonic()\n"
        "seqs = sequences(sys.argv[1])\n"
        "keys = ('1', '2', '3', '4', '999999999', '1000000000', '1000000001', '1000000002')\n"
        "print(' '.join(maildir_flags(k, seqs) or '-' for k in keys))\n"
        "print(time.monotonic() - started < 0.5)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split("\n")[:2] == ["R R SR R R R SF S", "True"]


def test_mh_sequences_are_read_safely(tmp_path: Path) -> None:
    """Not through a link, not from a fifo (root's scan would wait forever), and only the
    first MiB of a huge file."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("unseen: 1\n")
    (folder / ".mh_sequences").symlink_to(target)
    assert sequences(str(folder)) == {}
    (folder / ".mh_sequences").unlink()
    os.mkfifo(folder / ".mh_sequences")
    assert sequences(str(folder)) == {}
    (folder / ".mh_sequences").unlink()
    (folder / ".mh_sequences").write_text("unseen: 1\n" + "x" * (2 << 20) + "\nflagged: 1\n")
    assert set(sequences(str(folder))) == {"unseen"}  # "flagged" is past the first MiB
    assert maildir_flags("1", sequences(str(folder))) == ""
