"""mbox: message boundaries in one streamed pass, truncation, flags, and removing messages under
locks without ever losing one (interruptions simulated by making a step raise)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avtool.scan.mailbox import Message, OpenFile, Problem
from avtool.scan.mailbox import mbox as M
from avtool.scan.mailbox.locking import Busy
from avtool.scan.mailbox.maildir import Maildir
from tests.support.mailboxes import FROM_LINE, mbox_bytes, plain, snapshot


def parse(path: Path) -> tuple[list[Message], list[Problem]]:
    fd = os.open(path, os.O_RDONLY)
    found = list(M.messages(str(path), OpenFile(fd), os.path.getsize(path)))
    return (
        [i for i in found if isinstance(i, Message)],
        [i for i in found if isinstance(i, Problem)],
    )


def body_of(path: Path, m: Message) -> bytes:
    with open(path, "rb") as f:
        f.seek(m.offset)
        return f.read(m.size)


_line = st.text(alphabet="From ab>\t-:.", min_size=0, max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.lists(_line, max_size=8), min_size=1, max_size=6), chunk=st.integers(7, 64)
)
def test_boundaries_match_what_was_written(
    tmp_path_factory: pytest.TempPathFactory, bodies: list[list[str]], chunk: int
) -> None:
    """Any body text, read with tiny chunks (separators straddle reads): each message's bytes
    are exactly the message written, once quoted as mbox writers quote."""
    path = tmp_path_factory.mktemp("mbox") / "box"
    messages = [
        plain(f"m{n}", ("\n".join(lines) + "\n").encode()) for n, lines in enumerate(bodies)
    ]
    path.write_bytes(mbox_bytes(messages))
    old, M.CHUNK = M.CHUNK, chunk
    try:
        found, problems = parse(path)
    finally:
        M.CHUNK = old
    assert problems == []
    assert [m.key for m in found] == [str(n) for n in range(1, len(messages) + 1)]
    quoted = [
        data[: data.index(b"\n\n")] + data[data.index(b"\n\n") :].replace(b"\nFrom ", b"\n>From ")
        for data in messages
    ]
    assert [body_of(path, m) for m in found] == quoted
    # The cut points tile the file: each message from its From_ line to the next one.
    assert found[0].start == 0 and found[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(found, found[1:], strict=False))


def test_from_in_a_paragraph_is_body_text(tmp_path: Path) -> None:
    # Not after a blank line, so not a From_ line (mbox(5): messages end with a blank line).
    path = tmp_path / "box"
    path.write_bytes(FROM_LINE + plain("one", b"Hi,\nFrom here on we agree.\n") + b"\n")
    found, problems = parse(path)
    assert len(found) == 1 and problems == []
    assert body_of(path, found[0]).endswith(b"From here on we agree.\n")


def test_not_an_mbox_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(plain("no From_ line"))
    assert parse(path) == ([], [])


@pytest.mark.parametrize(
    ("tail", "text"),
    [
        (
            b"Subject: cut\n\nThe body stops mid-li",
            "truncated: message 2 ends in the middle of a line",
        ),
        (b"Subject: cut\nTo: x@y\n", "truncated: message 2 ends inside its header"),
    ],
)
def test_truncated_last_message_is_scanned_and_reported(
    tmp_path: Path, tail: bytes, text: str
) -> None:
    path = tmp_path / "box"
    path.write_bytes(mbox_bytes([plain("whole")]) + FROM_LINE + tail)
    found, problems = parse(path)
    assert [m.key for m in found] == ["1", "2"]
    assert body_of(path, found[1]) == tail
    assert problems == [Problem(str(path), text)]


@pytest.mark.parametrize(
    ("fields", "flags", "old"),
    [
        (b"", "", False),
        (b"Status: O\n", "", True),
        (b"Status: RO\n", "S", True),
        (b"Status: RO\nX-Status: AF\n", "FRS", True),
        (b"X-Status: D\n", "T", False),
    ],
)
def test_maildir_flags_from_status_fields(fields: bytes, flags: str, old: bool) -> None:
    head = b"From: a@b\n" + fields + b"\n"
    assert M.maildir_flags(head) == flags
    assert M.is_old(head) is old


# ---- removing messages ---------------------------------------------------------------------------
@pytest.fixture
def box(tmp_path: Path) -> Path:
    path = tmp_path / "spool" / "bob"
    path.parent.mkdir()
    path.write_bytes(mbox_bytes([plain(f"m{n}") for n in range(1, 6)], ["RO", "", "O", "", ""]))
    os.chmod(path, 0o620)
    old = time.time() - 3600
    os.utime(path, (old - 60, old))  # atime < mtime: "new mail" for mutt
    return path


def victims(path: Path, keys: set[str]) -> list[tuple[Message, str]]:
    found, _ = parse(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return [(m, M.digest(fd, m.offset, m.size)) for m in found if m.key in keys]
    finally:
        os.close(fd)


def move_out(
    path: Path, chosen: list[tuple[Message, str]], q: Maildir, timeout: float = 0.3
) -> list[str]:
    """M.remove of ``chosen`` (from victims()), each delivered into ``q``: where each went."""

    def deliver(fd: int, m: Message) -> str:
        return q.add_range(fd, m.offset, m.size, "new", "")

    done = M.remove(str(path), chosen, deliver, q.remove, lock_timeout=timeout)
    return [where for _, where in done]


def remove(path: Path, keys: set[str], q: Maildir, timeout: float = 0.3) -> list[str]:
    return move_out(path, victims(path, keys), q, timeout)


def subjects(path: Path) -> list[str]:
    found, problems = parse(path)
    assert problems == []
    return [body_of(path, m).split(b"Subject: ")[1].split(b"\n")[0].decode() for m in found]


@pytest.mark.parametrize(
    ("keys", "left"),
    [
        ({"1"}, ["m2", "m3", "m4", "m5"]),
        ({"3"}, ["m1", "m2", "m4", "m5"]),
        ({"5"}, ["m1", "m2", "m3", "m4"]),
        ({"2", "4"}, ["m1", "m3", "m5"]),
        ({"1", "2", "3", "4", "5"}, []),
    ],
)
def test_remove_keeps_every_other_byte(
    box: Path, tmp_path: Path, keys: set[str], left: list[str]
) -> None:
    before = box.read_bytes()
    chosen = victims(box, keys)
    gone = {m.key: body_of(box, m) for m, _ in chosen}
    old = time.time() - 3600
    os.utime(box, (old - 60, old))  # reading it above moved atime: "new mail" again
    st_before = box.stat()
    q = Maildir(str(tmp_path / "q"))
    moved = move_out(box, chosen, q)
    st_after = box.stat()  # before anything reads it (a read moves atime)
    assert subjects(box) == left
    assert sorted(Path(p).read_bytes() for p in moved) == sorted(gone.values())
    assert (st_after.st_mode, st_after.st_uid, st_after.st_gid) == (
        st_before.st_mode,
        st_before.st_uid,
        st_before.st_gid,
    )
    assert (st_after.st_atime_ns, st_after.st_mtime_ns) == (
        st_before.st_atime_ns,
        st_before.st_mtime_ns,
    )
    if not left:
        assert box.read_bytes() == b""  # an empty mbox, still there
    else:
        # What is left is the original with the removed spans cut out, byte for byte.
        spans = sorted((m.start, m.end) for m, _ in victims_from(before, tmp_path, keys))
        expected, pos = b"", 0
        for start, end in spans:
            expected += before[pos:start]
            pos = end
        assert box.read_bytes() == expected + before[pos:]
    assert not list(box.parent.glob("*.lock")) and not list(box.parent.glob(".*tmp"))


def victims_from(data: bytes, tmp_path: Path, keys: set[str]) -> list[tuple[Message, str]]:
    copy = tmp_path / "copy"
    copy.write_bytes(data)
    return victims(copy, keys)


class Boom(Exception):
    pass


@pytest.fixture
def fail_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """fail_at(name, nth, exc): make the nth call of os.<name> raise exc."""

    def arm(name: str, nth: int = 1, exc: BaseException | None = None) -> None:
        real = getattr(os, name)
        calls = {"n": 0}

        def wrapper(*args: object, **kwargs: object) -> object:
            calls["n"] += 1
            if calls["n"] == nth:
                raise exc if exc is not None else Boom(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)

    yield arm


@pytest.mark.parametrize(
    ("step", "nth", "exc"),
    [
        ("replace", 1, Boom()),  # the rename over the mbox
        ("replace", 1, KeyboardInterrupt()),  # Ctrl-C at the worst moment
        ("fsync", 5, Boom()),  # fsync of the kept bytes (2 deliveries: file + dir each)
        ("rename", 2, OSError(28, "No space left on device")),  # the second delivery
    ],
)
def test_interrupted_rewrite_loses_nothing(
    box: Path, tmp_path: Path, fail_at: object, step: str, nth: int, exc: BaseException
) -> None:
    before = box.read_bytes()
    q = Maildir(str(tmp_path / "q"))
    chosen = victims(box, {"2", "4"})
    fail_at(step, nth, exc)  # type: ignore[operator]
    with pytest.raises(type(exc)):
        move_out(box, chosen, q)
    # Every message is still in exactly one place: the mbox, unchanged; no copy, no debris.
    assert box.read_bytes() == before
    assert snapshot(tmp_path / "q") == {}
    assert sorted(os.listdir(box.parent)) == ["bob"]


def test_changed_since_the_scan_is_refused(box: Path, tmp_path: Path) -> None:
    chosen = victims(box, {"3"})
    data = box.read_bytes()
    box.write_bytes(data.replace(b"Subject: m1", b"Subject: m1 (edited by a reader)"))
    q = Maildir(str(tmp_path / "q"))
    with pytest.raises(M.Changed, match="changed since the scan"):
        M.remove(str(box), chosen, lambda fd, m: "", q.remove, lock_timeout=0.3)
    assert snapshot(tmp_path / "q") == {}


def test_a_same_length_edit_inside_the_scanned_message_is_refused(
    box: Path, tmp_path: Path
) -> None:
    """Same size, same boundaries: only the digest of the scanned bytes tells (issue 16)."""
    chosen = victims(box, {"3"})
    edited = box.read_bytes().replace(b"Subject: m3", b"Subject: X3")
    box.write_bytes(edited)
    q = Maildir(str(tmp_path / "q"))
    with pytest.raises(M.Changed, match=r"changed since the scan \(message 3\)"):
        move_out(box, chosen, q)
    assert box.read_bytes() == edited
    assert snapshot(tmp_path / "q") == {}


def test_an_mbox_replaced_since_the_scan_is_not_rewritten(box: Path, tmp_path: Path) -> None:
    """The same bytes in another file under the mbox's name: only the scanned file moves."""
    chosen = victims(box, {"1"})
    data = box.read_bytes()
    copy = box.parent / "copy"
    copy.write_bytes(data)
    os.replace(copy, box)
    q = Maildir(str(tmp_path / "q"))
    with pytest.raises(M.Changed, match="not the file that was scanned"):
        M.remove(str(box), chosen, lambda fd, m: "", q.remove, lock_timeout=0.3)
    assert box.read_bytes() == data and snapshot(tmp_path / "q") == {}


def test_mail_appended_after_the_scan_is_kept(box: Path, tmp_path: Path) -> None:
    chosen = victims(box, {"1"})
    with open(box, "ab") as f:
        f.write(mbox_bytes([plain("late arrival")]))
    q = Maildir(str(tmp_path / "q"))
    move_out(box, chosen, q)
    assert subjects(box) == ["m2", "m3", "m4", "m5", "late arrival"]


def test_a_fresh_dot_lock_makes_it_wait_then_give_up(box: Path, tmp_path: Path) -> None:
    lock = Path(str(box) + ".lock")
    lock.write_text("12345\n")
    before = box.read_bytes()
    t0 = time.monotonic()
    with pytest.raises(Busy, match="locked by another program"):
        remove(box, {"1"}, Maildir(str(tmp_path / "q")), timeout=0.4)
    assert time.monotonic() - t0 >= 0.4
    assert box.read_bytes() == before and lock.read_text() == "12345\n"


def test_a_stale_dot_lock_is_removed(box: Path, tmp_path: Path) -> None:
    lock = Path(str(box) + ".lock")
    lock.write_text("12345\n")
    old = time.time() - 400  # maillock(3): older than 5 minutes is stale
    os.utime(lock, (old, old))
    remove(box, {"1"}, Maildir(str(tmp_path / "q")))
    assert subjects(box) == ["m2", "m3", "m4", "m5"] and not lock.exists()


@pytest.mark.skipif(shutil.which("lockmail") is None, reason="needs maildrop's lockmail")
def test_waits_for_maildrops_lockmail(box: Path, tmp_path: Path) -> None:
    """A real Debian mail program holding the lock (dot lock + fcntl, lockmail(1))."""
    holder = subprocess.Popen(["lockmail", str(box), "sleep", "1.5"])
    try:
        deadline = time.monotonic() + 5
        while not Path(str(box) + ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(Busy):
            remove(box, {"1"}, Maildir(str(tmp_path / "q")), timeout=0.3)
        remove(box, {"1"}, Maildir(str(tmp_path / "q")), timeout=10)  # waits it out
    finally:
        holder.wait(10)
    assert subjects(box) == ["m2", "m3", "m4", "m5"]
