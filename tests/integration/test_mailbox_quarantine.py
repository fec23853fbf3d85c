"""Issue 18: an infected message found in a user's mailbox goes into avtool's quarantine store
(origin "mailbox", avtool/quarantine/intake.py) and comes back where it was
(avtool/quarantine/putback.py), with root never following a name the owner (user nobody)
controls, and nothing lost on the way.

These drive intake and put_back directly on mailboxes listed by the scan's own walk (the
rescan's --quarantine runs the same code after a real clamd's verdict: test_rescan_act.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mailbox
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from avtool.errors import UsageError
from avtool.quarantine import putback
from avtool.quarantine.intake import Found, StoreWriter, Taken, take
from avtool.quarantine.putback import put_back
from avtool.quarantine.store import Store
from avtool.scan.mailbox import mbox
from avtool.scan.mailbox.message import Message, Problem
from avtool.scan.mailbox.walk import walk
from tests.integration.test_move_attacks import attacker
from tests.support.dirs import public_dir
from tests.support.mailboxes import EICAR, mbox_bytes, plain, with_attachment

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root over mailboxes of user nobody")

NOBODY = pwd.getpwnam("nobody")
COURIER = pwd.getpwnam("courier")  # the store's owner, as the daemon's user owns it
VIRUS = b"Return-Path: <bad@example.net>\nDelivered-To: bob@example.test\n" + with_attachment(
    "virus", "eicar.com", EICAR
)
NAMES = ("Eicar-Signature",)
MTIME = 1_700_000_000


@dataclass
class World:
    home: Path  # nobody's, 0755
    store: Path  # the quarantine: courier's, 0700
    etc: Path  # root's, stands in for /etc

    def give(self, path: Path) -> Path:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(p, NOBODY.pw_uid, NOBODY.pw_gid, follow_symlinks=False)
        return path


@pytest.fixture
def world() -> Iterator[World]:
    with new_world() as w:
        yield w


@contextlib.contextmanager
def new_world() -> Iterator[World]:
    """nobody's home, courier's store, root's stand-in for /etc; removed after."""
    with public_dir("avq") as base:
        home, store, etc = base / "home", base / "store", base / "etc"
        home.mkdir(mode=0o755)
        etc.mkdir(mode=0o755)
        store.mkdir(mode=0o700)
        os.chown(store, COURIER.pw_uid, COURIER.pw_gid)
        w = World(home, store, etc)
        w.give(home)
        yield w


def maildir(world: World, name: str = "1700000000.M1P1.test:2,RS") -> tuple[Path, Path]:
    md = world.home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True, mode=0o700)
    (md / "cur" / "1600000000.M1P1.test:2,S").write_bytes(plain("hello"))
    msg = md / "cur" / name
    msg.write_bytes(VIRUS)
    msg.chmod(0o600)
    os.utime(msg, (MTIME, MTIME))
    world.give(md)
    return md, msg


def found(path: Path, infected: bytes = VIRUS) -> list[Found]:
    """The messages of ``path`` whose bytes are ``infected``, as a scan hands them over."""
    out = []
    for item in walk([str(path)]):
        assert isinstance(item, Message), item
        fd = item.source.fd if item.source else os.open(item.path, os.O_RDONLY)
        try:
            data = os.pread(fd, item.size, item.offset)
            digest = mbox.digest(fd, item.offset, item.size) if item.source else ""
        finally:
            if item.source is None:
                os.close(fd)
        if data == infected:
            out.append(Found(replace(item, source=None), NAMES, digest))
    return out


def intake(world: World, items: list[Found]) -> list[Taken | Problem]:
    with StoreWriter(str(world.store)) as store:
        return list(take(store, items, lock_timeout=2))


def release(world: World, ident: str) -> str:
    """What quarantine release does for a mailbox entry once its rescan passed it: put_back,
    which leaves the entry as it was, then the entry removed (release.py does, under its
    lock)."""
    with Store(str(world.store)) as store:
        fd = os.open(ident, os.O_RDONLY | os.O_DIRECTORY, dir_fd=store.fd)
        try:
            info = json.loads((world.store / ident / "verdict.json").read_bytes())
            before = sorted(os.listdir(world.store / ident))
            where = put_back(store, ident, fd, info)
            assert sorted(os.listdir(world.store / ident)) == before  # the caller removes it
        finally:
            os.close(fd)
        store.delete(ident)
    return where


def one_taken(events: list[Taken | Problem]) -> str:
    assert len(events) == 1 and isinstance(events[0], Taken), events
    return events[0].ident


def entry_info(world: World, ident: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((world.store / ident / "verdict.json").read_bytes())
    return info


def owned_private(path: Path, uid: int, mode: int) -> None:
    st = path.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, mode), path


# ---- the round trips -----------------------------------------------------------------------
def test_maildir_message_into_the_store_and_back_with_its_flags_and_owner(world: World) -> None:
    md, msg = maildir(world)
    ident = one_taken(intake(world, found(md)))
    assert not msg.exists()
    entry = world.store / ident
    owned_private(entry, COURIER.pw_uid, 0o700)  # the daemon's user lists and deletes it
    for name in ("data", "verdict.json"):
        owned_private(entry / name, COURIER.pw_uid, 0o600)
    assert (entry / "data").read_bytes() == VIRUS
    info = entry_info(world, ident)
    assert info["origin"] == "mailbox" and info["names"] == list(NAMES)
    assert info["sender"] == "bad@example.net" and info["recipients"] == ["bob@example.test"]
    assert info["mailbox"] == {
        "path": str(md), "kind": "maildir", "name": f"cur/{msg.name}",
        "uid": NOBODY.pw_uid, "gid": NOBODY.pw_gid,
    }  # fmt: skip
    with Store(str(world.store)) as store:
        listed = store.entry(ident)
    assert listed.error is None and listed.sender == "bad@example.net"

    back = Path(release(world, ident))
    assert back.parent == md / "cur" and back.name.endswith(":2,RS") and back != msg
    assert back.read_bytes() == VIRUS
    owned_private(back, NOBODY.pw_uid, 0o600)
    assert back.stat().st_gid == NOBODY.pw_gid and back.stat().st_mtime == MTIME
    assert not entry.exists()
    assert os.listdir(md / "tmp") == []


def test_a_new_message_goes_back_to_new(world: World) -> None:
    md, msg = maildir(world)
    os.rename(msg, md / "new" / "1700000001.M2P2.test")
    ident = one_taken(intake(world, found(md)))
    assert entry_info(world, ident)["mailbox"]["name"] == "new/1700000001.M2P2.test"
    back = Path(release(world, ident))
    assert back.parent == md / "new" and ":" not in back.name


def test_mbox_message_cut_out_under_its_locks_and_appended_back(world: World) -> None:
    folder = world.home / "mail"
    folder.mkdir()
    box = folder / "inbox"
    messages = [plain("hello"), VIRUS, plain("bye")]
    box.write_bytes(mbox_bytes(messages))
    world.give(folder)
    ident = one_taken(intake(world, found(box)))
    assert box.read_bytes() == mbox_bytes([messages[0], messages[2]])
    assert entry_info(world, ident)["mailbox"]["kind"] == "mbox"
    assert not (folder / "inbox.lock").exists()

    assert release(world, ident) == str(box)
    assert box.read_bytes() == mbox_bytes([messages[0], messages[2], messages[1]])
    assert box.stat().st_uid == NOBODY.pw_uid
    assert not (world.store / ident).exists()


def test_mh_message_goes_back_as_the_next_number(world: World) -> None:
    folder = world.home / "Mail" / "inbox"
    folder.mkdir(parents=True)
    for n, data in ((1, plain("one")), (2, VIRUS), (3, plain("three"))):
        (folder / str(n)).write_bytes(data)
    world.give(world.home / "Mail")
    ident = one_taken(intake(world, found(folder)))
    assert sorted(os.listdir(folder)) == ["1", "3"]
    assert entry_info(world, ident)["mailbox"]["name"] == "2"
    back = Path(release(world, ident))
    assert back == folder / "4" and back.read_bytes() == VIRUS
    owned_private(back, NOBODY.pw_uid, 0o600)


def mh_folder(world: World, sequences: bytes | None) -> Path:
    folder = world.home / "Mail" / "inbox"
    folder.mkdir(parents=True)
    for n, data in ((1, plain("one")), (2, VIRUS), (3, plain("three"))):
        (folder / str(n)).write_bytes(data)
    if sequences is not None:
        (folder / ".mh_sequences").write_bytes(sequences)
    world.give(world.home / "Mail")
    return folder


def test_mh_message_goes_back_into_its_sequences(world: World) -> None:
    """An unread, flagged MH message comes back unread and flagged (the current-message pointer
    stays where it was; other lines are kept byte for byte), as nmh and Python's mailbox read
    the sequences. Red without the entry's sequences, or without their restoring."""
    before = b"cur: 2\nunseen: 2-3\nflagged: 2\nreplied: 1\n"
    folder = mh_folder(world, before)
    ident = one_taken(intake(world, found(folder)))
    assert entry_info(world, ident)["mailbox"]["sequences"] == ["unseen", "flagged"]
    assert (folder / ".mh_sequences").read_bytes() == before  # root changes no user file
    back = Path(release(world, ident))
    assert back == folder / "4" and back.read_bytes() == VIRUS
    after = (folder / ".mh_sequences").read_bytes()
    assert after == b"cur: 2\nunseen: 2-3 4\nflagged: 2 4\nreplied: 1\n"
    seqs = mailbox.MH(str(folder), create=False).get_sequences()  # only messages there now
    assert seqs["unseen"] == [3, 4] and seqs["flagged"] == [4] and "cur" not in seqs
    owned_private(folder / ".mh_sequences", NOBODY.pw_uid, 0o644)
    assert sorted(os.listdir(folder)) == [".mh_sequences", "1", "3", "4"]  # no temp left


def test_mh_unseen_message_makes_the_sequences_file_again(world: World) -> None:
    """The sequences file was removed meanwhile: the unseen message gets one, the owner's,
    0600; a message in no sequence (read) makes none."""
    folder = mh_folder(world, b"unseen: 2\n")
    unseen = one_taken(intake(world, found(folder)))
    (folder / ".mh_sequences").unlink()
    assert release(world, unseen) == str(folder / "4")
    assert (folder / ".mh_sequences").read_bytes() == b"unseen: 4\n"
    owned_private(folder / ".mh_sequences", NOBODY.pw_uid, 0o600)

    (folder / ".mh_sequences").unlink()
    (folder / "4").rename(folder / "2")
    read = one_taken(intake(world, found(folder)))
    assert entry_info(world, read)["mailbox"]["sequences"] == []
    release(world, read)
    assert not (folder / ".mh_sequences").exists()


def test_mh_sequences_that_cannot_be_changed_cost_one_warning(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The message is back either way. Locked past the timeout, or a link (to a file of the
    owner's, which stays as it was: red without O_NOFOLLOW), the sequences file is one
    warning line."""
    folder = mh_folder(world, b"unseen: 2\n")
    monkeypatch.setattr(putback, "LOCK_TIMEOUT", 0.3)
    # A CLI test run earlier in this process set up avtool's logging (logs.py: no propagation).
    monkeypatch.setattr(logging.getLogger("avtool"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="avtool.quarantine")
    ident = one_taken(intake(world, found(folder)))
    holder = attacker("hold", "fcntl", str(folder / ".mh_sequences"))
    try:
        assert release(world, ident) == str(folder / "4")
    finally:
        holder.kill()
        holder.wait()
    assert (folder / ".mh_sequences").read_bytes() == b"unseen: 2\n"
    assert "put back, but not into its sequences (unseen): locked by another" in caplog.text

    caplog.clear()
    (folder / "4").rename(folder / "2")
    ident = one_taken(intake(world, found(folder)))
    decoy = world.home / "decoy"
    decoy.write_bytes(b"unseen: 2\n")
    world.give(decoy)
    (folder / ".mh_sequences").unlink()
    (folder / ".mh_sequences").symlink_to(decoy)
    assert release(world, ident) == str(folder / "4")
    assert decoy.read_bytes() == b"unseen: 2\n"
    assert "not into its sequences (unseen)" in caplog.text


def test_a_forged_sequence_name_is_refused(world: World) -> None:
    """verdict.json (the daemon's user can write it) naming a "sequence" that would add lines
    to the owner's sequences file: refused, the entry stays, nothing written."""
    folder = mh_folder(world, b"unseen: 2\n")
    ident = one_taken(intake(world, found(folder)))
    info = entry_info(world, ident)
    info["mailbox"]["sequences"] = ["unseen: 1-9\nflagged"]
    (world.store / ident / "verdict.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="mailbox.sequences: not a list of MH sequence names"):
        release(world, ident)
    assert sorted(os.listdir(folder)) == [".mh_sequences", "1", "3"]
    assert (folder / ".mh_sequences").read_bytes() == b"unseen: 2\n"


# ---- the owner's attacks ---------------------------------------------------------------------
def test_owner_swaps_the_folder_for_a_link_between_scan_and_move(world: World) -> None:
    """The scan found the message; before root moves it, the owner swaps ``cur/`` for a link to
    a root directory holding a root file of the same name. Root takes nothing, from either."""
    md, msg = maildir(world)
    items = found(md)
    decoy = world.etc / msg.name
    decoy.write_bytes(b"root's\n")
    attacker("swap", str(md / "cur"), str(world.etc)).wait(10)
    events = intake(world, items)
    assert len(events) == 1 and isinstance(events[0], Problem), events
    assert "not quarantined" in events[0].text and "left where it was" in events[0].text
    assert decoy.read_bytes() == b"root's\n" and decoy.stat().st_uid == 0
    assert (md.parent / "Maildir" / "cur.away" / msg.name).read_bytes() == VIRUS
    assert os.listdir(world.store) == []


def test_owner_swaps_the_folder_for_a_link_before_put_back(world: World) -> None:
    """The owner replaces the Maildir by a link to another directory of theirs: refused with
    one line, nothing written there, the entry stays. (Red with safedir's no-follow removed
    from the put-back: the message landed in the link's target.)"""
    md, _ = maildir(world)
    ident = one_taken(intake(world, found(md)))
    elsewhere = world.home / "elsewhere"
    for sub in ("cur", "new", "tmp"):
        (elsewhere / sub).mkdir(parents=True)
    world.give(elsewhere)
    attacker("swap", str(md), str(elsewhere)).wait(10)
    with pytest.raises(UsageError) as caught:
        release(world, ident)
    text = str(caught.value)
    assert "\n" not in text and f"not put back into {md}" in text and "symbolic link" in text
    assert "the entry stays" in text
    assert all(os.listdir(elsewhere / sub) == [] for sub in ("cur", "new", "tmp"))
    assert (world.store / ident / "data").read_bytes() == VIRUS


def test_a_forged_entry_cannot_aim_root_at_another_directory(world: World) -> None:
    """The daemon's user can edit verdict.json: pointing it at a root Maildir (as nobody's, or
    as root's) writes nothing there."""
    md, _ = maildir(world)
    ident = one_taken(intake(world, found(md)))
    target = world.etc / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (target / sub).mkdir(parents=True)
    info = entry_info(world, ident)
    for uid in (NOBODY.pw_uid, 0):
        info["mailbox"].update(path=str(target), uid=uid)
        (world.store / ident / "verdict.json").write_text(json.dumps(info))
        with pytest.raises(UsageError, match="the entry stays"):
            release(world, ident)
    assert all(os.listdir(target / sub) == [] for sub in ("cur", "new", "tmp"))
    assert (world.store / ident / "data").exists()


# ---- failures leave the entry ---------------------------------------------------------------
def test_put_back_failures_leave_the_entry(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = world.home / "mail"
    folder.mkdir()
    box = folder / "inbox"
    box.write_bytes(mbox_bytes([plain("hello"), VIRUS]))
    world.give(folder)
    ident = one_taken(intake(world, found(box)))
    kept = box.read_bytes()
    monkeypatch.setattr(putback, "LOCK_TIMEOUT", 0.3)
    holder = attacker("hold", "fcntl", str(box))
    try:
        with pytest.raises(UsageError, match=r"locked by another program .* the entry stays"):
            release(world, ident)
    finally:
        holder.kill()
        holder.wait()
    assert box.read_bytes() == kept and (world.store / ident / "data").exists()

    os.rename(folder, world.home / "gone")
    with pytest.raises(UsageError, match="No such file or directory; the entry stays"):
        release(world, ident)
    assert (world.store / ident / "data").exists()
    os.rename(world.home / "gone", folder)
    assert release(world, ident) == str(box)


def test_a_taken_name_or_a_missing_file_fails_with_one_line(world: World) -> None:
    md, _ = maildir(world)
    ident = one_taken(intake(world, found(md)))
    os.unlink(world.store / ident / "data")
    with pytest.raises(UsageError, match=r"data: No such file or directory; the entry stays"):
        release(world, ident)
    info = entry_info(world, ident)
    info["origin"] = "filter"
    (world.store / ident / "verdict.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="cannot put back: not an entry from a mailbox"):
        release(world, ident)


def test_nobody_cannot_read_the_entry(world: World) -> None:
    md, _ = maildir(world)
    ident = one_taken(intake(world, found(md)))
    as_nobody = subprocess.run(
        ["cat", str(world.store / ident / "data")], user="nobody", capture_output=True
    )
    assert as_nobody.returncode != 0 and not as_nobody.stdout
