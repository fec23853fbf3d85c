"""Issue 14 (High): root runs ``avtool scan --move-to`` over mailboxes that users own. Each test
performs an attack of the mailbox's owner (user nobody, tests/support/attacker.py) at its worst
moment, on a real scan with a real clamd, and checks that root neither follows the owner's
names nor loses a message:

- the mbox's folder swapped for a link to a root directory (a stand-in for /etc) once root
  has opened the mbox, the owner holding its lock meanwhile (inotify tells them when);
- a Maildir's ``cur/``, an MH folder, a loose file's folder swapped for a link to a root
  directory holding a root file of the same name, after the scan read the message;
- a message swapped for another file, or for a fifo;
- a lock held forever; a ``--move-to`` target that another user can write or replace.

The swap before the move runs through a seam, ``avtool.scan.scanner.move`` wrapped so that the
owner's step runs right before it: deterministic, and the same moment as for the code before
the fix (which moved by path after the scan).
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from avtool.cli.app import app, main
from avtool.scan import mailbox, scanner
from tests.integration.test_scan import Recorder
from tests.integration.test_security import OpenWatch
from tests.support.clamd_harness import REPO, ClamdServer
from tests.support.dirs import public_dir
from tests.support.mailboxes import EICAR, mbox_bytes, plain, snapshot, with_attachment

pytestmark = [
    pytest.mark.clamd,
    pytest.mark.skipif(os.geteuid() != 0, reason="root against a mailbox of user nobody"),
]
runner = CliRunner()
VIRUS = with_attachment("virus", "eicar.com", EICAR)
ROOT_FILE = b"root:x:0:0:root:/root:/bin/bash\n"  # what root's file holds, before and after


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich cuts long error lines to the terminal width (tests/conftest.py isolates the config)."""
    monkeypatch.setenv("COLUMNS", "400")


@dataclass
class World:
    home: Path  # the user's (nobody), 0755: they may rename and link anything in it
    etc: Path  # root's, 0755: stands in for /etc
    q: Path  # the quarantine, root's

    def owned(self, path: Path) -> Path:
        """``path`` and everything below it given to nobody."""
        pw = pwd.getpwnam("nobody")
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(p, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        return path

    def root_file(self, name: str) -> Path:
        path = self.etc / name
        path.write_bytes(ROOT_FILE)
        path.chmod(0o644)
        return path


@pytest.fixture
def world() -> Iterator[World]:
    """Below /tmp, not pytest's tmp_path (0700 dirs of root's that nobody cannot enter)."""
    with public_dir("avmv") as base:
        home, etc = base / "home", base / "etc"
        home.mkdir(mode=0o755)
        etc.mkdir(mode=0o755)
        w = World(home, etc, base / "q")
        w.owned(home)
        yield w


@pytest.fixture
def sock(clamd_server: ClamdServer) -> str:
    return f"clamd.backends={clamd_server.unix_socket}"


def attacker(*args: str) -> subprocess.Popen[str]:
    """tests/support/attacker.py as user nobody, once it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.attacker", *args],
        cwd=REPO,
        user="nobody",
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", f"attacker {args}: {line!r}, exit {proc.poll()}"
    return proc


def before_move(monkeypatch: pytest.MonkeyPatch, step: Callable[[], object]) -> None:
    """Run ``step`` when the scan is over and the move is about to start."""
    real = mailbox.move  # what scanner.move is, before the test wraps it

    def move(*args: Any, **kwargs: Any) -> Any:
        step()
        return real(*args, **kwargs)

    monkeypatch.setattr(scanner, "move", move)


def scan(sock: str, world: World, *paths: Path, timeout: float = 20) -> Any:
    return runner.invoke(
        app,
        [
            "scan",
            "--set",
            sock,
            "--set",
            f"scan.lock_timeout={timeout}",
            "--move-to",
            str(world.q),
            *map(str, paths),
        ],
    )


def quarantined(world: World) -> dict[str, bytes]:
    return snapshot(world.q / "new", world.q / "cur", world.q / "tmp")


def unchanged(path: Path) -> None:
    st = path.lstat()
    assert path.read_bytes() == ROOT_FILE
    assert (stat.S_ISREG(st.st_mode), st.st_uid, stat.S_IMODE(st.st_mode)) == (True, 0, 0o644)


def one_line(output: str, text: str) -> str:
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


# ---- (1) the mbox ---------------------------------------------------------------------------
def test_mbox_folder_swapped_for_a_link_once_root_opened_the_mbox(
    sock: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner holds the mbox's fcntl lock; root opens the mbox and waits for the lock; the
    owner, woken by inotify, swaps the folder for a link to "/etc" and lets go. Before the
    fix root then wrote the user's bytes over /etc/passwd (the temp file and the rename went
    by path): the mbox is named ``passwd``."""
    folder = world.home / "mail"
    folder.mkdir()
    mbox = folder / "passwd"
    data = mbox_bytes([plain("hello"), VIRUS, plain("bye")])
    mbox.write_bytes(data)
    world.owned(folder)
    passwd = world.root_file("passwd")
    procs: list[subprocess.Popen[str]] = []
    before_move(
        monkeypatch,
        lambda: procs.append(attacker("lock-swap", str(mbox), str(folder), str(world.etc))),
    )
    try:
        result = scan(sock, world, mbox)
        assert procs and procs[0].wait(10) == 0
        assert procs[0].stdout is not None and procs[0].stdout.read() == "swapped\n"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    unchanged(passwd)
    assert sorted(os.listdir(world.etc)) == ["passwd"]  # no temp file, no lock left there
    assert (world.home / "mail.away" / "passwd").read_bytes() == data  # all three still there
    assert quarantined(world) == {}
    line = one_line(result.output, "not moved")
    assert f"{mbox}: not moved: it or its directory was moved or replaced meanwhile" in line
    assert result.exit_code == 2


# ---- (2) (3) Maildir, MH, a loose file ------------------------------------------------------
MAILDIR_NAME = "1700000000.M1P1.test:2,S"


def maildir_box(world: World) -> tuple[Path, Path, Path]:
    """(what to scan, the folder the owner swaps, the message's path)."""
    md = world.home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / MAILDIR_NAME).write_bytes(VIRUS)
    (md / "new" / "1700000001.M2P1.test").write_bytes(plain("clean"))
    return md, md / "cur", md / "cur" / MAILDIR_NAME


def mh_box(world: World) -> tuple[Path, Path, Path]:
    inbox = world.home / "inbox"
    inbox.mkdir()
    (inbox / "1").write_bytes(VIRUS)
    (inbox / "2").write_bytes(plain("clean"))
    return inbox, inbox, inbox / "1"


def loose_file(world: World) -> tuple[Path, Path, Path]:
    files = world.home / "files"
    files.mkdir()
    (files / "x.eml").write_bytes(VIRUS)
    return files / "x.eml", files, files / "x.eml"


@pytest.mark.parametrize("make", [maildir_box, mh_box, loose_file], ids=["maildir", "mh", "file"])
def test_folder_swapped_for_a_link_after_the_scan(
    sock: str, world: World, monkeypatch: pytest.MonkeyPatch, make: Callable[..., Any]
) -> None:
    """After the scan read the message, the owner swaps its folder for a link to a root
    directory that holds a root file of the same name. Before the fix root then moved that
    root file into the quarantine (arbitrary file removal: /etc/shadow)."""
    scanned, folder, message = make(world)
    world.owned(scanned)
    victim = world.root_file(message.name)
    before_move(monkeypatch, lambda: attacker("swap", str(folder), str(world.etc)).wait(10))
    result = scan(sock, world, scanned)
    unchanged(victim)
    assert sorted(os.listdir(world.etc)) == [message.name]
    away = Path(str(folder) + ".away") / message.name
    assert away.read_bytes() == VIRUS  # the message stays where it was
    assert quarantined(world) == {}
    line = one_line(result.output, "not moved")
    assert "left where it was" in line and "symbolic link" in line
    assert result.exit_code == 2


def mbox_box(world: World) -> tuple[Path, Path, Path]:
    folder = world.home / "mail"
    folder.mkdir()
    (folder / "passwd").write_bytes(mbox_bytes([plain("hello"), VIRUS]))
    return folder / "passwd", folder, folder / "passwd"


@pytest.mark.parametrize(
    "make", [maildir_box, mh_box, loose_file, mbox_box], ids=["maildir", "mh", "file", "mbox"]
)
def test_with_no_attack_the_owner_s_infected_mail_moves(
    sock: str, world: World, make: Callable[..., Any]
) -> None:
    """The same mailboxes, left alone: root moves the infected message and only that one."""
    scanned, _, message = make(world)
    world.owned(scanned)
    before = snapshot(scanned)
    result = scan(sock, world, scanned)
    assert result.exit_code == 1, result.output
    [(where, data)] = quarantined(world).items()
    if message.name == "passwd":
        assert data in mbox_bytes([VIRUS]) and message.read_bytes() == mbox_bytes([plain("hello")])
        assert message.stat().st_uid == pwd.getpwnam("nobody").pw_uid  # still the owner's
    else:
        assert data == VIRUS and not message.exists()
        assert len(snapshot(scanned)) == len(before) - 1
    assert "MOVED" in result.output and where in result.output


def test_message_swapped_for_another_file_after_the_scan(
    sock: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the inode that was scanned moves: a file put under its name afterwards stays."""
    md, _, message = maildir_box(world)
    world.owned(md)

    def substitute() -> None:
        other = md / "tmp" / "other"
        other.write_bytes(plain("not scanned"))
        os.replace(other, message)

    before_move(monkeypatch, substitute)
    result = scan(sock, world, md)
    assert message.read_bytes() == plain("not scanned")
    assert quarantined(world) == {}
    line = one_line(result.output, "not moved")
    assert "its name holds another file than the one scanned; left where it was" in line
    assert result.exit_code == 2


def test_folder_swapped_between_the_listing_and_the_scan_is_not_followed(
    engine_config: Any, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan itself opens nothing through the owner's links either: ``cur/`` swapped for a
    link to a root directory once the message was listed (in /dev, an open alone can have
    effects: a watchdog starts, a tape rewinds). inotify shows every open in that directory."""
    md, folder, message = maildir_box(world)
    world.owned(md)
    world.root_file(message.name)
    real_walk = mailbox.walk  # scanner.walk_inputs, before the test wraps it

    def walk(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in real_walk(*args, **kwargs):
            if getattr(item, "path", "") == str(message):
                attacker("swap", str(folder), str(world.etc)).wait(10)
            yield item

    monkeypatch.setattr(scanner, "walk_inputs", walk)
    watch = OpenWatch(world.etc)
    try:
        report = Recorder()
        summary = scanner.run(engine_config(), [str(md)], report, options=scanner.Options(jobs=1))
        assert watch.events() == []
    finally:
        watch.close()
    [failed] = [r for r in report.results if r.status == "failed"]
    assert failed.message.path == str(message)
    reason = failed.verdict.reason  # type: ignore[union-attr]
    uid = pwd.getpwnam("nobody").pw_uid
    assert (
        reason
        == f"not opened: {folder} is a symbolic link, and {md} belongs to another user (uid {uid})"
    )
    assert summary.exit_code == 2


# ---- (4) nothing hangs root's scan ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fcntl", "flock", "dot"])
def test_a_lock_held_forever_costs_the_timeout_then_a_skip(
    sock: str, world: World, kind: str
) -> None:
    """The owner takes one of the three locks and never lets go: root's scan (a real process,
    as admins run it) gives up after scan.lock_timeout with one line, the mbox as it was."""
    folder = world.home / "mail"
    folder.mkdir()
    mbox = folder / "bob"
    data = mbox_bytes([VIRUS, plain("clean")])
    mbox.write_bytes(data)
    world.owned(folder)
    holder = attacker("hold", kind, str(mbox))
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "avtool", "scan", "--set", sock, "--set", "scan.lock_timeout=1"]
            + ["--move-to", str(world.q), str(mbox)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith("AVTOOL_")}
            | {"HOME": str(world.q.parent), "XDG_CONFIG_HOME": str(world.q.parent / "none")},
        )
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert took < 15, took
    assert (
        proc.stderr
        == f"avtool: error: {mbox}: not moved: locked by another program for 1 s; not changed\n"
    )
    assert mbox.read_bytes() == data and quarantined(world) == {}
    assert proc.returncode == 2


def test_a_message_swapped_for_a_fifo_does_not_hang_the_scan(
    engine_config: Any, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the listing (a regular file) and the scan's open, the owner puts a fifo under
    the message's name: open(2) of a fifo for reading waits for a writer, forever."""
    md, _, message = maildir_box(world)
    world.owned(md)
    real_walk = mailbox.walk  # scanner.walk_inputs, before the test wraps it

    def walk(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in real_walk(*args, **kwargs):
            if getattr(item, "path", "") == str(message):
                attacker("fifo", str(message)).wait(10)
            yield item

    monkeypatch.setattr(scanner, "walk_inputs", walk)
    report = Recorder()
    done: list[scanner.Summary] = []
    thread = threading.Thread(
        target=lambda: done.append(
            scanner.run(
                engine_config(),
                [str(md)],
                report,
                options=scanner.Options(jobs=1, move_to=str(world.q)),
            )
        ),
        daemon=True,
    )
    thread.start()
    thread.join(20)
    if thread.is_alive():  # let it go: a writer opening the fifo ends the reader's wait
        os.close(os.open(message, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("the scan hung in open(2) of a fifo")
    [summary] = done
    [failed] = [r for r in report.results if r.status == "failed"]
    assert failed.message.path == str(message)
    assert "not a regular file" in failed.verdict.reason  # type: ignore[union-attr]
    assert stat.S_ISFIFO(message.lstat().st_mode) and summary.exit_code == 2


# ---- (5) the target -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["other", "world", "sticky", "group-of-other"])
def test_move_to_in_a_dir_another_user_can_write_is_refused(
    sock: str, world: World, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the README's old example, /var/lib/avtool/found: /var/lib/avtool is courier's."""
    parent = world.home.parent / "lib"
    parent.mkdir()
    parent.chmod({"other": 0o750, "world": 0o777, "sticky": 0o1777, "group-of-other": 0o770}[kind])
    if kind in ("other", "group-of-other"):
        world.owned(parent)
    box = world.home / "x.eml"
    box.write_bytes(VIRUS)
    target = parent / "found"
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "--set", sock, "--move-to", str(target), str(box)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"avtool: --move-to {target}: refused: another user could replace")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not target.exists() and box.read_bytes() == VIRUS


def test_move_to_under_a_link_another_user_made_is_refused(
    sock: str, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = world.q.parent / "elsewhere"  # root's: where the owner would have it go
    elsewhere.mkdir()
    (world.home / "q").symlink_to(elsewhere)
    box = world.home / "x.eml"
    box.write_bytes(VIRUS)
    world.owned(world.home)
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "--set", sock, "--move-to", str(world.home / "q" / "found"), str(box)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{world.home / 'q'} is a symbolic link, and {world.home} belongs to another user" in err
    assert list(elsewhere.iterdir()) == [] and box.read_bytes() == VIRUS
