"""Issue 18: what ``avtool rescan`` does with what it finds, against a real clamd: --quarantine
(into the quarantine store, origin "mailbox", and back where it was), the owner's link swap
between the scan and the move, --notify (one report, no content, once; a killed run's findings
next time), --if-changed and the hourly job, and ``sig stats`` showing the last rescan.

Mailboxes belong to user nobody, the store to courier (the daemon's user), as on a server.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from avtool.cli.app import app
from avtool.quarantine import intake
from avtool.rescan import actions
from tests.integration.test_mailbox_quarantine import (
    COURIER,
    NOBODY,
    VIRUS,
    World,
    owned_private,
    release,
)
from tests.integration.test_move_attacks import attacker
from tests.integration.test_rescan import (
    add_signature,
    marker_message,
    new_marker,
    remove_signature,
)
from tests.support.clamd_harness import REPO, ClamdServer
from tests.support.dirs import public_dir
from tests.support.mailboxes import mbox_bytes, plain
from tests.support.serve import Daemon

pytestmark = [
    pytest.mark.clamd,
    pytest.mark.skipif(os.geteuid() != 0, reason="root over mailboxes of user nobody"),
]
cli = CliRunner()
NAME = "Eicar-Test-Signature"


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture(scope="module")
def clamd() -> Iterator[ClamdServer]:
    """A clamd of this module's own: a test adds a signature."""
    with public_dir("avra") as directory:
        server = ClamdServer(directory).start()
        try:
            yield server
        finally:
            server.stop()


class Box(World):
    base: Path

    @property
    def state(self) -> Path:
        return self.base / "state" / "rescan.sqlite"

    @property
    def outbox(self) -> Path:
        return self.base / "outbox"


@pytest.fixture
def box() -> Iterator[Box]:
    with public_dir("avra") as base:
        home, store, etc = base / "home", base / "store", base / "etc"
        home.mkdir(mode=0o755)
        etc.mkdir(mode=0o755)
        store.mkdir(mode=0o700)
        os.chown(store, COURIER.pw_uid, COURIER.pw_gid)
        b = Box(home, store, etc)
        b.base = base
        b.give(home)
        (base / "outbox").mkdir()
        stub = base / "sendmail"
        stub.write_text(  # a sendmail stand-in: keeps each mail; with "block", hangs first
            "#!/bin/sh\n"
            f"[ -e {base}/block ] && {{ echo $$ > {base}/blocked; sleep 60; }}\n"
            f'n=$(ls {base}/outbox | wc -l); d={base}/outbox/$n; mkdir "$d"\n'
            'printf "%s\\n" "$@" > "$d/argv"; cat > "$d/mail"\n'
        )
        stub.chmod(0o755)
        yield b


def sets(clamd: ClamdServer, box: Box, *more: str) -> list[str]:
    out = [f"clamd.backends={clamd.unix_socket}", f"rescan.state={box.state}"]
    out += [f"policy.quarantine_dir={box.store}", f"notify.sendmail={box.base / 'sendmail'}"]
    out += ["notify.postmaster=postmaster@example.test", *more]
    return [arg for s in out for arg in ("--set", s)]


def rescan(clamd: ClamdServer, box: Box, *args: str, more: tuple[str, ...] = ()) -> Any:
    result = cli.invoke(app, ["rescan", "--json", *sets(clamd, box, *more), *args])
    assert "Traceback" not in result.output, result.output
    return result


def objects(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def summary(result: Any) -> dict[str, Any]:
    last = objects(result)[-1]
    assert last["type"] == "summary", result.output
    return last


def mails(box: Box) -> list[tuple[list[str], str]]:
    """(sendmail's arguments, the mail's header as sent and its body decoded) for each mail."""
    out = []
    for d in sorted(box.outbox.iterdir(), key=lambda p: int(p.name)):
        raw = (d / "mail").read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        head = raw.split(b"\n\n", 1)[0].decode()
        out.append(((d / "argv").read_text().splitlines(), f"{head}\n\n{msg.get_content()}"))
    return out


def maildir(box: Box, name: str = "1700000000.M1P1.test:2,RS") -> tuple[Path, Path]:
    md = box.home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    (md / "cur" / "1700000001.M1P1.test:2,S").write_bytes(plain("hello"))
    msg = md / "cur" / name
    msg.write_bytes(VIRUS)
    msg.chmod(0o600)
    box.give(md)
    return md, msg


# ---- --quarantine, then back where it was -----------------------------------------------------
def test_rescan_quarantine_then_put_back_maildir_mbox_mh(clamd: ClamdServer, box: Box) -> None:
    md, msg = maildir(box)
    mail_dir = box.home / "mail"
    mail_dir.mkdir()
    inbox = mail_dir / "inbox"
    kept = [plain("one"), VIRUS, plain("three")]
    inbox.write_bytes(mbox_bytes(kept))
    mh = box.home / "Mail" / "inbox"
    mh.mkdir(parents=True)
    for n, data in ((1, plain("one")), (2, VIRUS), (3, plain("three"))):
        (mh / str(n)).write_bytes(data)
    box.give(box.home)

    result = rescan(clamd, box, "--quarantine", "--days", "0", str(md), str(inbox), str(mh))

    assert result.exit_code == 1, result.output
    s = summary(result)
    assert (s["infected"], s["moved"], s["errors"]) == (3, 3, 0), s
    moved = {o["path"]: o["to"] for o in objects(result) if o["type"] == "moved"}
    assert len(moved) == 3 and all(to.startswith("quarantine ") for to in moved.values())
    assert not msg.exists() and sorted(os.listdir(mh)) == ["1", "3"]
    assert inbox.read_bytes() == mbox_bytes([kept[0], kept[2]])
    idents = sorted(os.listdir(box.store))
    assert len(idents) == 3
    for ident in idents:
        owned_private(box.store / ident, COURIER.pw_uid, 0o700)
        info = json.loads((box.store / ident / "verdict.json").read_text())
        assert info["origin"] == "mailbox" and info["names"][0].startswith(NAME)
    listed = cli.invoke(
        app, ["quarantine", "list", "--json", "--set", f"policy.quarantine_dir={box.store}"]
    )
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(e["id"] for e in entries) == idents, listed.output
    assert {e["origin"] for e in entries} == {"mailbox"}
    assert {e["sender"] for e in entries} == {"bad@example.net"}
    kinds = {
        json.loads((box.store / i / "verdict.json").read_text())["mailbox"]["kind"]: i
        for i in idents
    }

    # The release's part for a mailbox entry (q-release dispatches here on origin "mailbox").
    back = Path(release(box, kinds["maildir"]))
    assert back.parent == md / "cur" and back.name.endswith(":2,RS")
    assert back.read_bytes() == VIRUS
    owned_private(back, NOBODY.pw_uid, 0o600)
    assert release(box, kinds["mbox"]) == str(inbox)
    assert inbox.read_bytes() == mbox_bytes([kept[0], kept[2], kept[1]])
    assert release(box, kinds["mh"]) == str(mh / "4")
    assert (mh / "4").read_bytes() == VIRUS and os.listdir(box.store) == []


def test_owner_swaps_the_folder_between_the_rescan_and_the_move(
    clamd: ClamdServer, box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan found the message; right before the move the owner swaps ``cur/`` for a link to
    a root directory holding a root file of the same name: nothing is taken from either."""
    md, msg = maildir(box)
    decoy = box.etc / msg.name
    decoy.write_bytes(b"root's\n")
    real = intake.take

    def take(*args: Any, **kwargs: Any) -> Any:
        attacker("swap", str(md / "cur"), str(box.etc)).wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(actions, "take", take)
    result = rescan(clamd, box, "--quarantine", str(md))
    assert result.exit_code == 2, result.output
    problems = [o for o in objects(result) if o["type"] == "error"]
    assert len(problems) == 1 and "not quarantined" in problems[0]["text"], problems
    assert decoy.read_bytes() == b"root's\n" and decoy.stat().st_uid == 0
    assert (md / "cur.away" / msg.name).read_bytes() == VIRUS
    assert os.listdir(box.store) == []


# ---- --notify ----------------------------------------------------------------------------------
def test_notify_sends_one_report_without_content_and_only_once(
    clamd: ClamdServer, box: Box
) -> None:
    md, msg = maildir(box)
    result = rescan(clamd, box, "--notify", str(md), more=("rescan.notify_owners=true",))
    assert result.exit_code == 1, result.output
    sent = mails(box)
    assert len(sent) == 2, sent  # the postmaster's, and nobody's own
    (argv, text), (owner_argv, owner_text) = sent
    assert argv == ["-f", "", "--", "postmaster@example.test"]
    assert "Subject: [avtool] 1 infected message(s) found in delivered mail" in text
    assert f"mailbox:   {md} [{msg.name.partition(':')[0]}]" in text
    assert "owner:     nobody" in text and "subject:   virus" in text
    assert f"found:     {NAME}" in text and "now:       still in the mailbox" in text
    assert "Auto-Submitted: auto-generated" in text
    body = VIRUS.split(b"\n\n", 1)[1].decode()
    assert not any(line and line in text for line in body.splitlines() if len(line) > 8)
    assert owner_argv == ["-f", "", "--", "nobody"] and f"found:     {NAME}" in owner_text

    again = rescan(clamd, box, "--notify", str(md))
    assert summary(again)["scanned"] == 0 and len(mails(box)) == 2  # reported once


def test_a_killed_runs_findings_are_reported_by_the_next_run_once(
    clamd: ClamdServer, box: Box
) -> None:
    """SIGKILL while the run waits for sendmail to take the report (the finding is committed,
    nothing was sent): the next run, which scans nothing new, sends it; the one after sends
    nothing. (A kill after sendmail took it and before the mark can send it twice: at least
    once, never lost.)"""
    md, _ = maildir(box)
    (box.base / "block").touch()
    cmd = [sys.executable, "-m", "avtool", "rescan", *sets(clamd, box), "--notify", str(md)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    blocked = box.base / "blocked"
    end = time.monotonic() + 60
    while not blocked.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    assert blocked.exists(), proc.stderr.read() if proc.stderr else b""
    proc.kill()
    proc.wait()
    os.kill(int(blocked.read_text() or "0"), signal.SIGKILL)
    (box.base / "block").unlink()
    assert mails(box) == []

    nxt = rescan(clamd, box, "--notify", str(md))
    assert summary(nxt)["scanned"] == 0, nxt.output
    sent = mails(box)
    assert len(sent) == 1 and "by a run that stopped before its report" in sent[0][1]
    assert f"found:     {NAME}" in sent[0][1]
    rescan(clamd, box, "--notify", str(md))
    assert len(mails(box)) == 1


# ---- --if-changed and the hourly job -----------------------------------------------------------
def test_the_hourly_job_rescans_only_when_the_signatures_changed(
    clamd: ClamdServer, box: Box
) -> None:
    md, _ = maildir(box)
    marker = new_marker()
    (md / "new" / "1700000002.M2P2.test").write_bytes(marker_message(marker))
    box.give(md)
    wrapper = box.base / "avtool"
    extra = " ".join(f"'{a}'" for a in sets(clamd, box))
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m avtool "$@" {extra} {md}\n')
    wrapper.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "AVTOOL_RESCAN_AVTOOL": str(wrapper)}
    env["AVTOOL_RESCAN_ALWAYS"] = "1"

    def job() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(REPO / "share" / "rescan-job.sh")], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    first = job()
    assert (first.returncode, first.stdout) == (0, ""), first
    assert len(mails(box)) == 1  # EICAR, reported
    assert job().returncode == 0 and len(mails(box)) == 1
    unchanged = rescan(clamd, box, "--if-changed", str(md))
    assert unchanged.exit_code == 0 and objects(unchanged) == []  # nothing read, nothing said
    assert "no new signatures since the last rescan" in unchanged.stderr

    add_signature(clamd, "AvtoolRescanAct", marker, box.base / "probe.eml")
    try:
        assert job().returncode == 0
        sent = mails(box)
        assert len(sent) == 2 and "found:     AvtoolRescanAct.UNOFFICIAL" in sent[1][1], sent
        assert job().returncode == 0 and len(mails(box)) == 2
    finally:
        (clamd.db_dir / "AvtoolRescanAct.ndb").unlink()
        assert clamd.command("RELOAD") == "RELOADING"


# ---- sig stats ---------------------------------------------------------------------------------
def test_sig_stats_shows_the_time_and_findings_of_the_last_rescan(
    clamd: ClamdServer, box: Box, daemon: Daemon
) -> None:
    def stats(*args: str) -> str:
        cmd = [sys.executable, "-m", "avtool", "sig", "-f", str(daemon.workdir / "avtool.conf")]
        cmd += ["-p", str(daemon.proc.pid), "-t", "10", "stats", *args]
        cmd += ["--set", f"rescan.state={box.state}"]
        done = subprocess.run(cmd, cwd=daemon.workdir, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    assert "last_rescan" not in json.loads(stats("--json"))  # no rescan yet
    assert "avtool_rescan" not in stats("--prometheus")
    md, _ = maildir(box)
    before = time.time()
    assert rescan(clamd, box, str(md)).exit_code == 1

    facts = json.loads(stats("--json"))
    when = datetime.datetime.fromisoformat(facts["last_rescan"])
    assert facts["last_rescan"].endswith("Z") and before - 1 <= when.timestamp() <= time.time()
    assert (facts["last_rescan_scanned"], facts["last_rescan_infected"]) == (2, 1)
    assert facts["messages"] == 0  # the daemon's counters are all still there
    prom = stats("--prometheus")
    assert f"avtool_rescan_last_timestamp_seconds {when.timestamp()}" in prom
    assert "avtool_rescan_last_infected 1\n" in prom and "avtool_rescan_last_scanned 2\n" in prom
    assert "# TYPE avtool_rescan_last_infected gauge" in prom
    table = stats()
    assert "last_rescan_infected" in table
    summary_file = box.state.parent / "rescan-last.json"
    assert summary_file.stat().st_mode & 0o777 == 0o644  # the daemon's user reads it
    as_courier = subprocess.run(["cat", str(summary_file)], user="courier", capture_output=True)
    assert as_courier.returncode == 0 and json.loads(as_courier.stdout) == json.loads(
        summary_file.read_text()
    )
    listing = subprocess.run(["ls", str(box.state.parent)], user="courier", capture_output=True)
    assert listing.returncode != 0  # search, not list
    assert box.state.stat().st_mode & 0o777 == 0o600  # not the state itself


# ---- avtool quarantine release of mailbox entries -------
def test_release_puts_a_false_positive_back_where_it_was_and_holds_a_virus(
    clamd: ClamdServer, box: Box
) -> None:
    """A signature names a harmless message in a Maildir (with flags), an mbox and an MH
    folder; rescan --quarantine takes all three and EICAR; the signature goes; release puts
    each back where it was, as its owner, and holds EICAR back (exit 1, nothing moved)."""
    marker = new_marker()
    harmless = marker_message(marker)
    md = box.home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / "1700000000.M1P1.test:2,FS").write_bytes(harmless)
    (md / "new" / "1700000001.M1P1.test").write_bytes(VIRUS)
    inbox = box.home / "mail" / "inbox"
    inbox.parent.mkdir()
    inbox.write_bytes(mbox_bytes([plain("one"), harmless]))
    mh = box.home / "Mail" / "inbox"
    mh.mkdir(parents=True)
    (mh / "1").write_bytes(harmless)
    box.give(box.home)
    add_signature(clamd, "AvtoolFalsePositive", marker, box.base / "probe.eml")
    try:
        taken = rescan(clamd, box, "--quarantine", "--days", "0", str(md), str(inbox), str(mh))
        assert summary(taken)["moved"] == 4, taken.output
    finally:
        remove_signature(clamd, "AvtoolFalsePositive", box.base / "probe.eml")
    by_kind: dict[str, list[str]] = {}
    for ident in os.listdir(box.store):
        info = json.loads((box.store / ident / "verdict.json").read_text())
        by_kind.setdefault(info["mailbox"]["kind"], []).append(ident)
    verdicts = {i: (box.store / i / "verdict.json").read_text() for i in by_kind["maildir"]}
    eicar = next(i for i, text in verdicts.items() if "Eicar" in text)
    store = [
        "--set",
        f"policy.quarantine_dir={box.store}",
        "--set",
        f"clamd.backends={clamd.unix_socket}",
    ]

    held = cli.invoke(app, ["quarantine", "release", eicar, *store])
    assert held.exit_code == 1, held.output
    assert (box.store / eicar / "data").exists() and os.listdir(md / "new") == []

    rest = sorted(set(os.listdir(box.store)) - {eicar})
    done = cli.invoke(app, ["quarantine", "release", *rest, *store])
    assert done.exit_code == 0, done.output
    assert sorted(os.listdir(box.store)) == [eicar]
    (back,) = os.listdir(md / "cur")
    assert back.endswith(":2,FS") and (md / "cur" / back).read_bytes() == harmless
    owned_private(md / "cur" / back, NOBODY.pw_uid, 0o600)
    assert inbox.read_bytes() == mbox_bytes([plain("one"), harmless])
    assert os.listdir(mh) == ["1"] and (mh / "1").read_bytes() == harmless  # the next number
    owned_private(mh / "1", NOBODY.pw_uid, 0o600)
