"""The Maildir++ quota of a mailbox (its ``maildirsize``, avtool/scan/mailbox/quota.py) loses a
message that goes into the quarantine and gets it back when release puts it back, as
Courier's own delivery and deletion do; root (the intake) writes only to a regular file of
the owner's, never through a link, and never waits on a fifo."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.scan.mailbox import quota
from avtool.scan.mailbox.message import Problem
from avtool.scan.mailbox.quarantine import move, open_quarantine
from tests.integration.test_mailbox_quarantine import (
    NOBODY,
    VIRUS,
    World,
    found,
    intake,
    maildir,
    new_world,
    one_taken,
    owned_private,
    release,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root over mailboxes of user nobody")
HEADER = "1000000S,1000C\n"


@pytest.fixture(name="world")
def _world() -> Iterator[World]:
    with new_world() as w:
        yield w


def with_quota(world: World, md: Path) -> Path:
    q = md / "maildirsize"
    q.write_text(HEADER + "         100            1\n")
    q.chmod(0o600)
    world.give(q)
    return q


def lines(q: Path) -> list[tuple[int, int]]:
    text = q.read_text()
    assert text.startswith(HEADER)
    return [(int(a), int(b)) for a, b in (line.split() for line in text.splitlines()[1:])]


def folder(world: World, md: Path, name: str, message: str) -> Path:
    sub = md / name
    for d in ("cur", "new", "tmp"):
        (sub / d).mkdir(parents=True)
    (sub / "maildirfolder").touch()
    (sub / "cur" / message).write_bytes(VIRUS)
    world.give(sub)
    return sub


def test_a_quarantined_message_leaves_the_quota_and_comes_back(world: World) -> None:
    md, _ = maildir(world)
    q = with_quota(world, md)
    ident = one_taken(intake(world, found(md)))
    assert lines(q) == [(100, 1), (-len(VIRUS), -1)]
    release(world, ident)
    assert lines(q) == [(100, 1), (-len(VIRUS), -1), (len(VIRUS), 1)]
    owned_private(q, NOBODY.pw_uid, 0o600)  # appended to, still the owner's


def test_a_folder_counts_in_its_parent_trash_and_trashed_messages_nowhere(world: World) -> None:
    md, _ = maildir(world)
    q = with_quota(world, md)
    sent = folder(world, md, ".Sent", "1700000002.M3P3.test:2,S")
    ident = one_taken(intake(world, found(sent)))
    assert lines(q)[1:] == [(-len(VIRUS), -1)]
    assert not (sent / "maildirsize").exists()
    release(world, ident)
    assert lines(q)[1:] == [(-len(VIRUS), -1), (len(VIRUS), 1)]
    before = q.read_bytes()
    for name, message in ((".Trash", "1700000003.M4P4.test:2,S"), (".Old", "1.M5P5.x:2,ST")):
        ident = one_taken(intake(world, found(folder(world, md, name, message))))
        release(world, ident)
    assert q.read_bytes() == before


def test_scan_move_to_takes_the_message_out_of_the_quota(world: World) -> None:
    md, _ = maildir(world)
    q = with_quota(world, md)
    (victim,) = found(md)
    dest = open_quarantine(str(world.etc / "quarantine"))  # root's, as --move-to wants it
    events = list(move(dest, [(victim.message, "")], lock_timeout=2))
    assert len(events) == 1 and not isinstance(events[0], Problem), events
    assert lines(q) == [(100, 1), (-len(VIRUS), -1)]


def test_a_size_in_the_name_is_the_size_counted() -> None:
    assert quota.size_of("1700000000.M1P1.host,S=1234:2,S", 99) == 1234
    assert quota.size_of("1700000000.M1P1.host:2,S", 99) == 99


def test_no_maildirsize_no_quota(world: World) -> None:
    md, _ = maildir(world)
    release(world, one_taken(intake(world, found(md))))
    assert not (md / "maildirsize").exists()


@pytest.mark.parametrize("how", ["symlink", "hardlink", "not_the_owners"])
def test_root_never_writes_a_file_the_owner_points_it_at(world: World, how: str) -> None:
    """The attack: the owner makes ``maildirsize`` name a file of root's, hoping the intake
    (root) appends to it."""
    md, _ = maildir(world)
    target = world.etc / "shadow"
    target.write_text("root:x:0:\n")
    q = md / "maildirsize"
    if how == "symlink":
        q.symlink_to(target)
        os.lchown(q, NOBODY.pw_uid, NOBODY.pw_gid)
    elif how == "hardlink":
        os.link(target, q)  # as root here; fs.protected_hardlinks stops nobody doing so
    else:
        q.write_text(HEADER)  # root's own file in the owner's Maildir
    one_taken(intake(world, found(md)))
    assert target.read_text() == "root:x:0:\n"
    if how == "not_the_owners":
        assert q.read_text() == HEADER


def test_a_fifo_for_maildirsize_does_not_hold_the_intake(world: World) -> None:
    md, _ = maildir(world)
    q = md / "maildirsize"
    os.mkfifo(q)
    os.chown(q, NOBODY.pw_uid, NOBODY.pw_gid)
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(intake(world, found(md))), daemon=True)
    thread.start()
    thread.join(20)
    assert done and len(done[0]) == 1, "the intake hung on a fifo"  # type: ignore[arg-type]
