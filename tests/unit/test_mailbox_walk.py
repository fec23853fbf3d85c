"""Format detection and walking: what each path is, which messages it holds, and one Problem per
bad input (never an exception)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from avtool.scan.mailbox import Message, Problem, spool, walk
from avtool.scan.mailbox.walk import kind_of
from tests.support.mailboxes import maildir, mbox_bytes, plain


def items(*args: str, **kw: object) -> tuple[list[Message], list[Problem]]:
    found = list(walk(list(args), **kw))  # type: ignore[arg-type]
    return (
        [i for i in found if isinstance(i, Message)],
        [i for i in found if isinstance(i, Problem)],
    )


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n", "mbox"),
        (b"Received: from x\nSubject: y\n\nbody", "message"),
        (b"Subject: only\n\n", "message"),
        (b"X-Weird_Field.1: v\n", "message"),
        (b"\x7fELF\x02\x01\x01\0\0\0", None),
        (b"MZ\x90\0\x03\0\0\0", None),
        (b"Hello world, this is text\n", None),
        (b"From: a@b\n", "message"),  # a header field, not a From_ line
        (b"Subject: x\0binary", None),
        (b"", None),
    ],
)
def test_kind_of(head: bytes, kind: str | None) -> None:
    assert kind_of(head) == kind


def test_maildir_new_and_cur_keys_flags_and_folders(tmp_path: Path) -> None:
    md = maildir(
        tmp_path / "Maildir",
        [
            ("new", "1.a.host", plain("one")),
            ("cur", "2.b.host:2,FS", plain("two")),
            ("tmp", "3.c.host", plain("in delivery")),
            ("cur", ".hidden", plain("not a message")),
        ],
    )
    (md / "maildirsize").write_text("1000S\n")  # Maildir++ quota file: not a message
    (md / "courierimapkeywords").mkdir()
    (md / "courierimapkeywords" / "2.b.host").write_text("$Label1\n")
    maildir(md / ".Sent", [("cur", "4.d.host:2,S", plain("sent"))])
    messages, problems = items(str(md))
    assert problems == []
    got = {(m.mailbox, m.key, m.subdir, m.info) for m in messages}
    assert got == {
        (str(md), "1.a.host", "new", ""),
        (str(md), "2.b.host", "cur", "2,FS"),
        (str(md / ".Sent"), "4.d.host", "cur", "2,S"),
    }
    assert all(m.format == "maildir" and m.size == os.path.getsize(m.path) for m in messages)


def test_mbox_messages_and_mh_folder(tmp_path: Path) -> None:
    box = tmp_path / "inbox"
    box.write_bytes(mbox_bytes([plain("a"), plain("b"), plain("c")]))
    mh = tmp_path / "Mail" / "inbox"
    mh.mkdir(parents=True)
    for n in (1, 2, 10):
        (mh / str(n)).write_bytes(plain(f"mh {n}"))
    (mh / ",3").write_bytes(plain("removed by rmm"))  # nmh's backup of a removed message
    (mh / "sub").mkdir()
    (mh / "sub" / "1").write_bytes(plain("in a subfolder"))
    messages, problems = items(str(box), str(mh))
    assert problems == []
    assert [(m.format, m.key) for m in messages if m.format == "mbox"] == [
        ("mbox", "1"),
        ("mbox", "2"),
        ("mbox", "3"),
    ]
    mh_keys = {(m.mailbox, m.key) for m in messages if m.format == "mh"}
    assert mh_keys == {(str(mh), "1"), (str(mh), "2"), (str(mh), "10"), (str(mh / "sub"), "1")}


def test_directory_walk_detects_each_format(tmp_path: Path) -> None:
    root = tmp_path / "home"
    maildir(root / "bob" / "Maildir", [("new", "1.x.h", plain("m"))])
    (root / "mail").mkdir()
    (root / "mail" / "carol").write_bytes(mbox_bytes([plain("c1"), plain("c2")]))
    (root / "saved.eml").write_bytes(plain("loose"))
    (root / "notes.txt").write_text("shopping list\n")
    (root / "empty-mbox").write_bytes(b"")
    os.symlink(root / "saved.eml", root / "link.eml")
    messages, problems = items(str(root))
    assert sorted(m.format for m in messages) == ["file", "maildir", "mbox", "mbox"]
    # Met while walking: a note that does not change the exit status; an empty file is an
    # empty mailbox; a symbolic link is not followed.
    assert problems == [
        Problem(str(root / "notes.txt"), _NOT_MAIL, error=False),
    ]


_NOT_MAIL = "not a mail message or mailbox (unrecognised or binary data); skipped"


def test_bad_inputs_one_problem_each_and_the_walk_goes_on(tmp_path: Path) -> None:
    empty_md = maildir(tmp_path / "EmptyMaildir", [])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01\x02binary" * 10)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    good = tmp_path / "good.eml"
    good.write_bytes(plain("good"))
    args = [str(tmp_path / "missing"), str(empty_md), str(junk), str(empty), "/dev/null", str(good)]
    messages, problems = items(*args)
    assert [m.path for m in messages] == [str(good)]
    assert problems == [
        Problem(str(tmp_path / "missing"), "no such file or directory"),
        Problem(str(empty_md), "empty Maildir: no message in new/ or cur/"),
        Problem(str(junk), _NOT_MAIL),
        Problem(str(empty), "empty file: no message"),
        Problem("/dev/null", "not a file or directory (a device, pipe or socket)"),
    ]
    assert all(p.error for p in problems)


def test_named_symlink_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.eml").write_bytes(plain("x"))
    os.symlink(tmp_path / "real.eml", tmp_path / "link.eml")
    messages, problems = items(str(tmp_path / "link.eml"))
    assert len(messages) == 1 and problems == []


def test_mh_without_sequences_is_detected_by_numbered_files(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "1").write_bytes(plain("x"))
    (tmp_path / "f" / ".xmhcache").write_text("")
    messages, _ = items(str(tmp_path / "f"))
    assert [m.format for m in messages] == ["mh"]
    (tmp_path / "g").mkdir()  # a numbered file next to another file: a plain directory
    (tmp_path / "g" / "1").write_bytes(plain("x"))
    (tmp_path / "g" / "a.eml").write_bytes(plain("y"))
    messages, _ = items(str(tmp_path / "g"))
    assert sorted(m.format for m in messages) == ["file", "file"]


def test_empty_mh_folder_named(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / ".mh_sequences").write_text("")
    assert items(str(tmp_path / "f")) == ([], [Problem(str(tmp_path / "f"), _EMPTY_MH)])


_EMPTY_MH = "empty MH folder: no numbered message file"


def test_exclude_skips_the_quarantine(tmp_path: Path) -> None:
    maildir(tmp_path / "Maildir", [("new", "1.x.h", plain("m"))])
    q = maildir(tmp_path / "Maildir" / ".Quarantine", [("new", "2.x.h", plain("q"))])
    st = os.stat(q)
    messages, _ = items(str(tmp_path / "Maildir"), exclude={(st.st_dev, st.st_ino)})
    assert [m.key for m in messages] == ["1.x.h"]


def test_stdin_one_message_or_an_mbox() -> None:
    one = spool(io.BytesIO(plain("from stdin")))
    messages, problems = items("-", stdin=one)
    assert problems == [] and len(messages) == 1
    m = messages[0]
    assert (m.mailbox, m.format, m.offset, m.size) == ("-", "file", 0, len(plain("from stdin")))
    assert m.source is not None and os.pread(m.source.fd, 4096, 0) == plain("from stdin")

    box = spool(io.BytesIO(mbox_bytes([plain("a"), plain("b")])))
    messages, problems = items("-", stdin=box)
    assert [(m.format, m.key) for m in messages] == [("mbox", "1"), ("mbox", "2")]

    for data, text in ((b"", "empty input"), (b"\x00\xff junk", "not a mail message")):
        _, problems = items("-", stdin=spool(io.BytesIO(data)))
        assert len(problems) == 1 and problems[0].text.startswith(text) and problems[0].error


def test_unlistable_directory_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any directory: simulate EACCES on scandir of one of them.
    md = maildir(tmp_path / "Maildir", [("new", "1.x.h", plain("m"))])
    real = os.scandir

    def scandir(path: str) -> object:
        if str(path).endswith("/cur"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    messages, problems = items(str(md))
    assert [m.key for m in messages] == ["1.x.h"]
    assert problems == [Problem(str(md / "cur"), "cannot list: Permission denied")]
