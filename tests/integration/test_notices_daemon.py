"""The daemon's notices (issue 17) with a real clamd: one per quarantined or dropped message,
after Courier has its reply, never waited for; a sendmail that hangs or fails changes neither
the reply nor the quarantine; clean mail starts no sendmail at all.

sendmail is a stand-in (notify.sendmail) that records its argv and stdin, then waits for a gate
file: while the gate is shut, every notice is stuck in sendmail, as when a submission waits on
Courier's filters (avtool among them) under load."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import EICAR, Daemon, config_for, mail, start_daemon
from tests.unit.test_notices import calls, stand_in

pytestmark = pytest.mark.clamd


def until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


def daemon(
    clamd: Any, tmp_path: Path, sendmail: str, *, tcp: bool = False, timeout: float = 2.0
) -> Daemon:
    backend = clamd.tcp_address if tcp else str(clamd.unix_socket)
    conf = config_for(backend, "max_connections = 1\n")  # one worker thread
    conf += (
        f'\n[policy]\ninfected = "quarantine"\ndrop = ["*Drop*"]\n'
        f'quarantine_dir = "{tmp_path / "q"}"\n'
        f'\n[notify]\nsendmail = "{stand_in(tmp_path, sendmail)}"\n'
        'postmaster = ["pm@example.test"]\nrecipients = true\n'
        f"timeout = {timeout}\n"
    )
    return start_daemon(conf)


def send(d: Daemon, data: bytes, rcpts: list[str] | None = None) -> tuple[str, float]:
    path, ctls = d.spool.message(data, rcpts)
    for ctl in ctls:  # Courier's ids are unique: entries of the same second must not collide
        text = ctl.read_text().replace("00001234", f"{d.spool.counter:08X}")
        ctl.write_text(text)
    started = time.monotonic()
    reply = d.filter(path, ctls)
    return reply, time.monotonic() - started


@pytest.mark.parametrize("tcp", [False, True], ids=["loop", "tcp-worker"])
def test_each_quarantined_message_gets_its_notice_after_the_reply(
    clamd_server: Any, tmp_path: Path, tcp: bool
) -> None:
    gate = tmp_path / "gate"
    wait = f"for i in $(seq 1200); do [ -e {gate} ] && break; sleep 0.05; done"
    d = daemon(clamd_server, tmp_path, wait, tcp=tcp, timeout=60.0)
    try:
        # Three in a row with one worker thread, every sendmail stuck: none of it waits.
        for _ in range(3):
            reply, took = send(d, mail(attachment=EICAR), ["rcpt@example.test", "x@example.test"])
            assert reply.startswith("200 ") and "quarantined" in reply, reply
            assert took < 3.0, took
        assert until(lambda: len(calls(tmp_path)) == 3)  # three stuck in sendmail at once
        gate.touch()
        assert until(lambda: d.log().count("sent to") == 6), d.log()
    finally:
        gate.touch()  # no stand-in left waiting when the test failed
        assert d.stop() == 0
    ids = sorted(p.name for p in (tmp_path / "q").iterdir())
    by_to: dict[str, list[str]] = {}
    for call in calls(tmp_path):
        argv = call["argv"]
        assert isinstance(argv, list) and argv[:3] == ["-f", "", "--"]
        msg = email.message_from_string(str(call["stdin"]), policy=email.policy.default)
        assert msg["Auto-Submitted"] == "auto-generated" and msg["Precedence"] == "bulk"
        by_to.setdefault(",".join(argv[3:]), []).append(msg.get_body().get_content())  # type: ignore[union-attr]
    assert sorted(by_to) == ["pm@example.test", "rcpt@example.test,x@example.test"]
    for text in by_to["pm@example.test"]:
        (ident,) = [i for i in ids if f"avtool quarantine release {i}\n" in text]
        assert "<sender@example.com>" in text and "Eicar" in text
    assert all("sender@example.com" in t for t in by_to["rcpt@example.test,x@example.test"])


@pytest.mark.parametrize("sendmail", ["sleep 60", "echo 'no way'; exit 75"], ids=["hangs", "fails"])
def test_a_sendmail_that_hangs_or_fails_changes_nothing_for_the_mail(
    clamd_server: Any, tmp_path: Path, sendmail: str
) -> None:
    d = daemon(clamd_server, tmp_path, sendmail)
    try:
        reply, took = send(d, mail(attachment=EICAR))
        assert reply == "200 Ok (quarantined)\n" and took < 3.0, (reply, took)
        assert until(lambda: d.log().count("not sent") == 2, timeout=10), d.log()
        (entry,) = (tmp_path / "q").iterdir()
        assert (entry / "data").read_bytes() == mail(attachment=EICAR)
        lines = [x for x in d.log().splitlines() if "not sent" in x]
        why = "no answer within 2 s: killed" if "sleep" in sendmail else "exited 75: no way"
        assert len(lines) == 2 and all(why in x for x in lines), lines  # postmaster, recipient
        # and the filter goes on as before
        reply, _ = send(d, mail(subject="clean"))
        assert reply.startswith("200 "), reply
    finally:
        assert d.stop() == 0


def test_clean_mail_starts_no_sendmail_and_a_dropped_one_tells_the_postmaster(
    clamd_server: Any, tmp_path: Path
) -> None:
    d = daemon(clamd_server, tmp_path, "exit 0")
    drop = clamd_server.add_signature_file(
        "drop.ndb", "Test.Drop.Me:0:*:" + b"drop-me-please-0123456789".hex() + "\n"
    )
    try:
        clamd_server.command("RELOAD")
        time.sleep(1.0)
        for i in range(20):
            reply, _ = send(d, mail(subject=f"clean {i}"))
            assert reply.startswith("200 "), reply
        reply, _ = send(d, mail(body=b"drop-me-please-0123456789\n"))
        assert reply.startswith("200 "), reply
        assert until(lambda: len(calls(tmp_path)) == 1 and "sent to" in d.log())
    finally:
        drop.unlink()
        clamd_server.command("RELOAD")
        assert d.stop() == 0
    (call,) = calls(tmp_path)
    assert call["argv"] == ["-f", "", "--", "pm@example.test"]  # no recipients notice: not held
    assert "[avtool] dropped: Test.Drop.Me" in str(call["stdin"])
