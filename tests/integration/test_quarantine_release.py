"""``avtool quarantine release`` on entries the filter itself wrote, rescanned by a real clamd.

Courier's sendmail is replaced (notify.sendmail) by a stand-in that records what it was given
(argv, environment, the message) and fails on request, as Courier's does: the real one is
driven in tests/e2e/test_quarantine_release.py.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avtool.cli.common import load_config
from avtool.quarantine.release import HeldBack, Releaser
from avtool.quarantine.store import Store
from tests.support.serve import EICAR, Daemon, config_for, control_text, mail, start_daemon

pytestmark = pytest.mark.clamd

CLEAN = mail(b"A false positive, clean by today's signatures.\n", "clean now")
OTHER_ID = "0000000000ABCDEF.0000000069000001.00005678"

# Courier's sendmail as a release sees it: exit 0 once the message is queued; on trouble
# its words on stderr and a sysexits code (75: "450 Service temporarily unavailable.",
# measured with Courier down). Files beside it steer it: "fail" (exit code and text),
# "sleep" (seconds before it answers), "spool" (a directory to queue into), "block" (a
# directory to make).
STAND_IN = textwrap.dedent(
    """\
    #!/usr/bin/python3
    import json, os, sys, time
    here = os.path.dirname(os.path.abspath(__file__))
    def setting(name):
        try:
            with open(os.path.join(here, name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None
    message = sys.stdin.buffer.read()
    if setting("block"):  # a directory in the way of the entry's removal
        os.makedirs(os.path.join(setting("block"), "x"))
    if setting("sleep"):
        time.sleep(float(setting("sleep")))
    fail = setting("fail")
    if fail:
        code, _, text = fail.partition(" ")
        print(text, file=sys.stderr)
        sys.exit(int(code))
    spool = setting("spool") or os.path.join(here, "outbox")
    name = os.path.join(spool, "%d.%d" % (time.time_ns(), os.getpid()))
    try:
        with open(name + ".eml", "wb") as f:
            f.write(message)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        print("450 Service temporarily unavailable. (%s)" % e.strerror, file=sys.stderr)
        sys.exit(75)
    with open(name + ".json", "w") as f:
        json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)
    """
)


@pytest.fixture(scope="module")
def held(clamd_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store the filter wrote: an EICAR message to rcpt@example.test, and one to
    postmaster@ (a pass-recipient, who got it) and rcpt@example.test (held)."""
    qdir = tmp_path_factory.mktemp("held") / "quarantine"
    extra = (
        f'\n[policy]\ninfected = "quarantine"\nquarantine_dir = "{qdir}"\n'
        'pass_recipients = ["postmaster@*"]\n'
    )
    d: Daemon = start_daemon(config_for(str(clamd_server.unix_socket), extra))
    try:
        data, ctls = d.spool.message(mail(attachment=EICAR))
        assert d.filter(data, ctls).startswith("200 ")
        both = ["postmaster@example.test", "rcpt@example.test"]
        data, ctls = d.spool.message(mail(attachment=EICAR, subject="two"), both)
        ctls[0].write_text(control_text(both).replace("00001234", OTHER_ID[-8:]))
        assert d.filter(data, ctls).startswith("200 ")
    finally:
        d.stop()
    assert len(list(qdir.iterdir())) == 2
    return qdir


@pytest.fixture
def store(held: Path, tmp_path: Path) -> Path:
    """A copy of the held store that this test may change."""
    q = tmp_path / "q"
    shutil.copytree(held, q, symlinks=True)
    os.chmod(q, 0o700)
    return q


@pytest.fixture
def sendmail(tmp_path: Path) -> Path:
    d = tmp_path / "sm"
    (d / "outbox").mkdir(parents=True)
    (d / "sendmail").write_text(STAND_IN)
    (d / "sendmail").chmod(0o700)
    return d / "sendmail"


@pytest.fixture
def conf(store: Path, clamd_server: Any, sendmail: Path, tmp_path: Path) -> Path:
    path = tmp_path / "avtool.conf"
    path.write_text(
        f'[clamd]\nbackends = ["{clamd_server.unix_socket}"]\n\n'
        f'[policy]\nquarantine_dir = "{store}"\n\n[notify]\nsendmail = "{sendmail}"\n'
    )
    return path


def avtool(
    conf: Path, *args: str, user: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "avtool", "quarantine", *args, "-f", str(conf)]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, cwd="/", check=False, env=env
    )


def entries(store: Path) -> dict[str, dict[str, Any]]:
    """id -> verdict.json of every entry in ``store``."""
    return {p.name: json.loads((p / "verdict.json").read_text()) for p in store.iterdir()}


def two(store: Path) -> str:
    """The entry of the EICAR message to postmaster@ (a pass-recipient) and rcpt@."""
    (ident,) = [i for i, info in entries(store).items() if len(info["recipients"]) == 2]
    return ident


def plain(store: Path) -> str:
    """The entry of the EICAR message to rcpt@example.test alone."""
    (ident,) = [i for i, v in entries(store).items() if v["recipients"] == ["rcpt@example.test"]]
    return ident


def clean_now(store: Path, ident: str, data: bytes = CLEAN) -> str:
    """Make ``ident`` hold what today's signatures find clean (a false positive, fixed)."""
    (store / ident / "data").write_bytes(data)
    return ident


def snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def outbox(sendmail: Path) -> list[tuple[dict[str, Any], bytes]]:
    """What the stand-in queued: (its argv and environment, the message), oldest first."""
    box = sendmail.parent / "outbox"
    return [
        (json.loads(p.read_text()), p.with_suffix(".eml").read_bytes())
        for p in sorted(box.glob("*.json"))
    ]


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- released -------------------------------------------------------------------------------


def test_clean_now_is_reinjected_with_its_envelope_and_removed(
    store: Path, conf: Path, sendmail: Path
) -> None:
    ident = clean_now(store, plain(store))
    rewriting = {"MAILUSER": "x", "MAILHOST": "evil.test", "MAILNAME": "X", "NAME": "X"}
    r = avtool(conf, "release", ident, env=dict(os.environ, **rewriting))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"released {ident} to <rcpt@example.test>\n" and r.stderr == ""
    ((call, message),) = outbox(sendmail)
    assert call["argv"] == ["-f", "sender@example.com", "--", "rcpt@example.test"]
    assert message == CLEAN  # byte for byte: nothing added, nothing lost
    # From stays the message's own: sendmail(1) rewrites it after MAILUSER, MAILHOST, NAME...
    assert call["env"]["PATH"] == "/usr/bin:/bin" and not set(rewriting) & set(call["env"])
    assert ident not in entries(store) and not any(p.name.startswith(".") for p in store.iterdir())


def test_null_sender_is_given_as_an_empty_f(store: Path, conf: Path, sendmail: Path) -> None:
    ident = clean_now(store, plain(store))
    info = json.loads((store / ident / "verdict.json").read_text())
    (store / ident / "verdict.json").write_text(json.dumps(dict(info, sender="")))
    assert avtool(conf, "release", ident).returncode == 0
    ((call, _),) = outbox(sendmail)
    # measured with Courier's sendmail: -f '' gives Return-Path: <>, -f '<>' is refused (517)
    assert call["argv"] == ["-f", "", "--", "rcpt@example.test"]


def test_only_the_held_recipients_get_it_not_the_pass_recipient(
    store: Path, conf: Path, sendmail: Path
) -> None:
    ident = clean_now(store, two(store))
    assert entries(store)[ident]["held"] == ["rcpt@example.test"]
    assert avtool(conf, "release", ident).returncode == 0
    ((call, _),) = outbox(sendmail)
    assert call["argv"][-2:] == ["--", "rcpt@example.test"]  # postmaster@ had it already


def test_to_replaces_the_recipients(store: Path, conf: Path, sendmail: Path) -> None:
    ident = clean_now(store, plain(store))
    r = avtool(conf, "release", ident, "--to", "admin@example.test", "--to", "<b@example.test>")
    assert r.returncode == 0, r.stderr
    ((call, _),) = outbox(sendmail)
    rcpts = ["admin@example.test", "b@example.test"]
    assert call["argv"] == ["-f", "sender@example.com", "--", *rcpts]


def test_bad_to_is_one_line_and_nothing_moves(store: Path, conf: Path, sendmail: Path) -> None:
    ident = clean_now(store, plain(store))
    before = snapshot(store)
    r = avtool(conf, "release", ident, "--to", "a b@example.test")
    assert r.returncode == 2 and "not an address" in one_line(r.stderr)
    assert snapshot(store) == before and outbox(sendmail) == []


# --- held back --------------------------------------------------------------------------------


def test_still_infected_exits_1_delivers_nothing_and_stays(
    store: Path, conf: Path, sendmail: Path
) -> None:
    ident = plain(store)
    before = snapshot(store)
    r = avtool(conf, "release", ident)
    assert r.returncode == 1
    err = one_line(r.stderr)
    assert f"{ident}: still infected: Eicar" in err and "--force" in err
    assert outbox(sendmail) == [] and snapshot(store) == before and r.stdout == ""


def test_force_releases_anyway_and_says_so_in_a_warning(
    store: Path, conf: Path, sendmail: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ident = plain(store)
    cfg = load_config(conf, None, role="daemon")
    with Store(str(store)) as s:
        with pytest.raises(HeldBack):
            Releaser.from_config(cfg, s).release(ident)
        assert outbox(sendmail) == []
        with caplog.at_level(logging.INFO, logger="avtool"):
            done = Releaser.from_config(cfg, s, force=True).release(ident)
    assert done.forced and done.verdict.startswith("still infected: Eicar")
    (record,) = [r for r in caplog.records if r.name == "avtool.quarantine"]
    assert record.levelno == logging.WARNING
    assert f"released {ident}" in record.getMessage() and "FORCED" in record.getMessage()
    assert len(outbox(sendmail)) == 1 and ident not in entries(store)


def test_force_through_the_cli(store: Path, conf: Path, sendmail: Path) -> None:
    ident = plain(store)
    r = avtool(conf, "release", "--force", ident)
    assert r.returncode == 0, r.stderr
    assert "(forced: still infected: Eicar" in r.stdout
    assert len(outbox(sendmail)) == 1 and ident not in entries(store)


def test_clamd_down_is_an_error_and_the_entry_stays(
    store: Path, sendmail: Path, tmp_path: Path
) -> None:
    ident = clean_now(store, plain(store))
    conf = tmp_path / "down.conf"
    conf.write_text(
        f'[clamd]\nbackends = ["{tmp_path}/no.sock"]\nconnect_timeout = 0.1\nscan_timeout = 1\n'
        f'\n[policy]\nquarantine_dir = "{store}"\n\n[notify]\nsendmail = "{sendmail}"\n'
    )
    before = snapshot(store)
    r = avtool(conf, "release", ident)
    assert r.returncode == 2 and "rescan failed" in one_line(r.stderr)
    assert snapshot(store) == before and outbox(sendmail) == []


# --- several ids ------------------------------------------------------------------------------


def test_several_ids_all_done_the_worst_exit(store: Path, conf: Path, sendmail: Path) -> None:
    clean = clean_now(store, plain(store))
    infected = next(i for i in entries(store) if i != clean)
    r = avtool(conf, "release", "20200101T000000-nothere", infected, clean)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and "no such quarantine entry" in lines[0]
    assert "still infected" in lines[1]
    assert r.stdout == f"released {clean} to <rcpt@example.test>\n"
    assert list(entries(store)) == [infected] and len(outbox(sendmail)) == 1
    r = avtool(conf, "release", infected)
    assert r.returncode == 1


# --- concurrency ------------------------------------------------------------------------------


def test_two_concurrent_releases_deliver_once(store: Path, conf: Path, sendmail: Path) -> None:
    ident = clean_now(store, plain(store))
    (sendmail.parent / "sleep").write_text("2")  # the first one is still delivering
    cmd = [sys.executable, "-m", "avtool", "quarantine", "release", ident, "-f", str(conf)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # past its start-up and its scan: inside sendmail
    second = avtool(conf, "release", ident)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert "being released by another process" in one_line(second.stderr)
    assert len(outbox(sendmail)) == 1 and ident not in entries(store)
    again = avtool(conf, "release", ident)  # after it: gone, one clear line
    assert again.returncode == 2 and "no such quarantine entry" in one_line(again.stderr)


def test_delete_and_purge_leave_an_entry_being_released(
    store: Path, conf: Path, sendmail: Path
) -> None:
    """A delete (or purge) does not pull an entry from under a release in progress."""
    ident = clean_now(store, plain(store))
    (sendmail.parent / "sleep").write_text("2")
    cmd = [sys.executable, "-m", "avtool", "quarantine", "release", ident, "-f", str(conf)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    deleted = avtool(conf, "delete", ident)
    purged = avtool(conf, "purge", "--older-than", "0")
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert deleted.returncode == 2 and "being released" in one_line(deleted.stderr)
    assert purged.returncode == 0 and purged.stdout == "purged 1 message(s)\n"  # the other one


def test_purge_sweeps_what_a_release_left_on_its_way_out(
    store: Path, conf: Path, sendmail: Path
) -> None:
    """A release renames the delivered entry to .released-ID, then removes it; a crash or a
    full disk between the two leaves that directory. The next purge removes it whatever its
    age, unless its release still holds the lock; other names are not its business (red with
    the sweep removed from purge)."""
    ident = clean_now(store, plain(store))
    kept = store / ident
    left = store / f".released-{ident}x"
    shutil.copytree(kept, left)
    locked = store / f".released-{ident}y"
    shutil.copytree(kept, locked)
    other = store / ".released-notanid"
    other.mkdir()
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = avtool(conf, "purge", "--older-than", "1000")
    finally:
        os.close(fd)
    assert r.returncode == 0 and r.stdout == "purged 0 message(s)\n"
    assert not left.exists() and locked.exists() and other.exists() and kept.exists()
    assert avtool(conf, "purge", "--older-than", "1000").returncode == 0
    assert not locked.exists() and kept.exists()


# --- failures: the entry stays ----------------------------------------------------------------


def test_courier_refusing_leaves_the_entry(store: Path, conf: Path, sendmail: Path) -> None:
    ident = clean_now(store, plain(store))
    (sendmail.parent / "fail").write_text("75 450 Service temporarily unavailable.")
    before = snapshot(store)
    r = avtool(conf, "release", ident)
    assert r.returncode == 2
    err = one_line(r.stderr)
    assert "Courier refused the message (exit 75: 450 Service temporarily unavailable.)" in err
    assert "the entry stays" in err and r.stdout == ""
    assert snapshot(store) == before
    (sendmail.parent / "fail").unlink()
    assert avtool(conf, "release", ident).returncode == 0  # Courier back: it goes
    assert len(outbox(sendmail)) == 1


def test_sendmail_missing(store: Path, conf: Path, tmp_path: Path) -> None:
    ident = clean_now(store, plain(store))
    before = snapshot(store)
    r = avtool(conf, "release", ident, "--set", f"notify.sendmail={tmp_path}/none/sendmail")
    assert r.returncode == 2
    assert "not found (notify.sendmail; is Courier installed?)" in one_line(r.stderr)
    assert snapshot(store) == before


@pytest.mark.parametrize("writable", ["program", "directory"])
def test_a_sendmail_others_could_replace_is_not_run(
    store: Path, conf: Path, sendmail: Path, writable: str
) -> None:
    """Root runs notify.sendmail with the held mail: not a program another user could swap."""
    ident = clean_now(store, plain(store))
    target = sendmail if writable == "program" else sendmail.parent
    target.chmod(0o777)  # noqa: S103 - the mistake under test
    before = snapshot(store)
    r = avtool(conf, "release", ident)
    assert r.returncode == 2
    err = one_line(r.stderr)
    said = "is writable by others (mode 0777)" if writable == "program" else "by every user"
    assert f"notify.sendmail: {target}" in err and said in err and "not run, not released" in err
    assert outbox(sendmail) == [] and snapshot(store) == before


@pytest.mark.parametrize("ident", ["20260101T000000-nothere", "../../etc/passwd", "x"])
def test_unknown_or_malformed_id(conf: Path, sendmail: Path, ident: str) -> None:
    r = avtool(conf, "release", ident)
    assert r.returncode == 2
    one_line(r.stderr)
    assert outbox(sendmail) == []


@pytest.mark.parametrize("missing", ["data", "verdict.json"])
def test_entry_missing_a_file(store: Path, conf: Path, sendmail: Path, missing: str) -> None:
    ident = clean_now(store, plain(store))
    (store / ident / missing).unlink()
    before = snapshot(store)
    r = avtool(conf, "release", ident)
    assert r.returncode == 2
    assert f"{ident}: {missing}: missing (a corrupt entry): not released" in one_line(r.stderr)
    assert snapshot(store) == before and outbox(sendmail) == []


def test_delivered_but_not_removed_is_said_and_never_delivered_again(
    store: Path, conf: Path, sendmail: Path
) -> None:
    ident = clean_now(store, plain(store))
    (sendmail.parent / "block").write_text(str(store / f".released-{ident}"))
    r = avtool(conf, "release", ident)
    assert r.returncode == 2
    err = one_line(r.stderr)
    assert f"{ident}: delivered, but the entry could not be removed" in err
    assert f"a second release of it is refused: delete it (avtool quarantine delete {ident})" in err
    assert (store / ident / "released").exists() and len(outbox(sendmail)) == 1
    (sendmail.parent / "block").unlink()
    again = avtool(conf, "release", ident)
    assert again.returncode == 2 and "already delivered" in one_line(again.stderr)
    assert len(outbox(sendmail)) == 1
    assert avtool(conf, "delete", ident).returncode == 0


def test_an_earlier_release_that_could_not_remove_is_not_repeated(
    store: Path, conf: Path, sendmail: Path
) -> None:
    ident = clean_now(store, plain(store))
    (store / ident / "released").write_bytes(b"")
    r = avtool(conf, "release", ident)
    assert r.returncode == 2 and "already delivered" in one_line(r.stderr)
    assert outbox(sendmail) == []


# --- full disk (root: a tiny tmpfs) -----------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> None:
    """Until ENOSPC (unbuffered: nothing left to flush at close)."""
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_spool_disk_refuses_and_nothing_is_lost(
    store: Path, conf: Path, sendmail: Path, tiny: Path
) -> None:
    ident = clean_now(store, plain(store))
    (tiny / "spool").mkdir()
    (sendmail.parent / "spool").write_text(str(tiny / "spool"))
    fill(tiny)
    before = snapshot(store)
    r = avtool(conf, "release", ident)
    assert r.returncode == 2 and "Courier refused the message (exit 75" in one_line(r.stderr)
    assert snapshot(store) == before


def test_full_store_disk_still_releases(
    held: Path, clamd_server: Any, sendmail: Path, tiny: Path, tmp_path: Path
) -> None:
    """Taking an entry out needs no space: a rename, then unlinks."""
    q = tiny / "q"
    shutil.copytree(held, q)
    ident = clean_now(q, plain(q))
    fill(tiny)
    conf = tmp_path / "tiny.conf"
    conf.write_text(
        f'[clamd]\nbackends = ["{clamd_server.unix_socket}"]\n\n'
        f'[policy]\nquarantine_dir = "{q}"\n\n[notify]\nsendmail = "{sendmail}"\n'
    )
    r = avtool(conf, "release", ident)
    assert r.returncode == 0, r.stderr
    assert ident not in entries(q) and len(outbox(sendmail)) == 1


# --- who may ----------------------------------------------------------------------------------


def test_other_users_get_a_permission_line(store: Path, conf: Path, sendmail: Path) -> None:
    ident = clean_now(store, plain(store))
    r = avtool(conf, "release", ident, user="nobody")
    assert r.returncode == 2
    assert r.stderr == (
        "avtool: quarantine: permission denied: only root and the filter's user (courier) may\n"
    )
    assert outbox(sendmail) == [] and ident in entries(store)
