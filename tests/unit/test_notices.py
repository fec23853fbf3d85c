"""Notices (issue 17): templates, who gets one (never the sender), the fields that keep robots
quiet, and Courier's sendmail called with a null envelope sender, through a stand-in that
records its argv and stdin (notify.sendmail)."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from avtool.config import Config
from avtool.config import keys as K
from avtool.quarantine import notices
from avtool.quarantine.notices import Notice, NoticeError

IDENT = "20261130T120000-0000000000ABCDEF.0000000069000001.00001234"


def config(**values: object) -> Config:
    cfg = Config.defaults()
    for name, value in values.items():
        cfg = cfg.override(getattr(K, name), value)
    return cfg


def stand_in(tmp_path: Path, body: str = "", name: str = "sendmail") -> Path:
    """A sendmail that appends {"argv", "stdin"} as one JSON line to calls.jsonl, then runs
    ``body`` (shell)."""
    script = tmp_path / name
    record = tmp_path / "calls.jsonl"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}) + '\\n')\n"
        "import os\n"
        f"os.execvp('sh', ['sh', '-c', {body or 'exit 0'!r}])\n"
    )
    script.chmod(0o755)
    return script


def calls(tmp_path: Path) -> list[dict[str, object]]:
    record = tmp_path / "calls.jsonl"
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


def parsed(text: bytes) -> EmailMessage:
    msg = email.message_from_bytes(text, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def held(
    cfg: Config, sender: str = "bad@example.com", rcpts: list[str] | None = None
) -> list[Notice]:
    rcpts = ["a@example.test", "b@example.test"] if rcpts is None else rcpts
    return notices.for_message(cfg, "quarantine", IDENT, sender, rcpts, ["Eicar-Test-Signature"])


# ---- who gets a notice -------------------------------------------------------------------------
def test_postmaster_notice_names_sender_recipients_names_id_and_the_release_command() -> None:
    (note,) = held(config())
    assert note.template == "quarantined" and note.to == ("postmaster",)
    msg = parsed(notices.compose(config(), note))
    body = msg.get_content()
    for part in ("bad@example.com", "<a@example.test>, <b@example.test>", "Eicar-Test-Signature"):
        assert part in body
    assert f"avtool quarantine release {IDENT}\n" in body
    assert "Eicar-Test-Signature" in msg["Subject"]


def test_recipients_notice_goes_to_recipients_never_to_the_envelope_sender() -> None:
    """The sender is also a recipient (as forged mail often says): still no notice to it."""
    cfg = config(NOTIFY_RECIPIENTS=True, NOTIFY_POSTMASTER=("Bad@Example.com", "pm@example.test"))
    rcpts = ["a@example.test", "BAD@example.com", "a@example.test"]
    pm, rc = held(cfg, sender="bad@EXAMPLE.com", rcpts=rcpts)
    assert pm.to == ("pm@example.test",)
    assert rc.template == "recipient" and rc.to == ("a@example.test",)
    msg = parsed(notices.compose(cfg, rc))
    assert msg["To"] == "undisclosed:;"  # one recipient does not learn of the others
    assert "ask Bad@Example.com, pm@example.test to release it" in msg.get_content()


def test_no_recipient_notice_by_default_and_no_notice_at_all_with_no_postmaster() -> None:
    assert [n.template for n in held(config())] == ["quarantined"]
    assert held(config(NOTIFY_POSTMASTER=())) == []
    assert held(config(NOTIFY_POSTMASTER=(), NOTIFY_RECIPIENTS=True))[0].template == "recipient"


def test_a_dropped_message_tells_the_postmaster_only() -> None:
    cfg = config(NOTIFY_RECIPIENTS=True)
    notes = notices.for_message(cfg, "drop", "M1", "s@example.com", ["a@example.test"], ["X"])
    assert [n.template for n in notes] == ["dropped"]
    assert "release" not in parsed(notices.compose(cfg, notes[0])).get_content()


# ---- the mail ----------------------------------------------------------------------------------
def test_robots_stay_quiet_and_the_template_cannot_change_that(tmp_path: Path) -> None:
    (tmp_path / "quarantined.txt").write_text(
        "Subject: held $id\nAuto-Submitted: no\nPrecedence: first-class\nX-Extra: $names\n\n"
        "Body $id $nosuchvalue\n"
    )
    cfg = config(NOTIFY_TEMPLATES=str(tmp_path))
    msg = parsed(notices.compose(cfg, held(cfg)[0]))
    assert msg.get_all("Auto-Submitted") == ["auto-generated"]
    assert msg.get_all("Precedence") == ["bulk"]
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Subject"] == f"held {IDENT}" and msg["X-Extra"] == "Eicar-Test-Signature"
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert msg.get_content() == f"Body {IDENT} $nosuchvalue\n"  # safe_substitute


def test_the_admin_replaces_one_template_the_others_stay_shipped(tmp_path: Path) -> None:
    (tmp_path / "dropped.txt").write_text("Subject: mine\n\nmine\n")
    cfg = config(NOTIFY_TEMPLATES=str(tmp_path))
    assert notices.template(cfg, "dropped") == "Subject: mine\n\nmine\n"
    assert notices.template(cfg, "quarantined") == (notices.SHIPPED / "quarantined.txt").read_text()
    for name in notices.TEMPLATES:  # every shipped template names only values avtool gives
        text = (notices.SHIPPED / f"{name}.txt").read_text()
        assert text.startswith("Subject: ")
        known = {"id", "sender", "recipients", "names", "date", "host", "release", "days"}
        known |= {"contact", "count", "since", "entries"}
        import string

        used = {m[1] or m[2] for m in string.Template.pattern.findall(text) if m[1] or m[2]}
        assert used <= known, (name, used - known)


def test_a_forged_address_cannot_add_a_header_field() -> None:
    cfg = config()
    (note,) = held(cfg, sender="x@example.com\r\nBcc: victim@example.org\r\nSubject: hi")
    tmp = notices.compose(cfg, note)
    msg = parsed(tmp)
    assert msg["Bcc"] is None and len(msg.get_all("Subject") or []) == 1
    assert b"\nBcc:" not in tmp


def test_utf8_names_and_non_ascii_templates(tmp_path: Path) -> None:
    (tmp_path / "quarantined.txt").write_text("Subject: Virus gefunden: $names\n\nGrüße, $id\n")
    cfg = config(NOTIFY_TEMPLATES=str(tmp_path))
    msg = parsed(notices.compose(cfg, held(cfg)[0]))
    assert msg["Subject"] == "Virus gefunden: Eicar-Test-Signature"
    assert msg.get_content() == f"Grüße, {IDENT}\n"


def test_a_template_that_is_missing_everywhere_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(NoticeError, match="no template nothing.txt in "):
        notices.template(config(NOTIFY_TEMPLATES=str(tmp_path)), "nothing")


# ---- sendmail -----------------------------------------------------------------------------------
def test_send_gives_a_null_envelope_sender_and_the_recipients_after_dashes(tmp_path: Path) -> None:
    cfg = config(SENDMAIL=str(stand_in(tmp_path)))
    text = notices.compose(cfg, held(cfg)[0])
    notices.send(cfg, ["-oi@example.test", "postmaster"], text)
    (call,) = calls(tmp_path)
    # Courier's sendmail takes a null sender as -f '' (it refuses -f '<>': module docstring)
    assert call["argv"] == ["-f", "", "--", "-oi@example.test", "postmaster"]
    assert call["stdin"] == text.decode()


def test_send_failure_is_one_clear_error(tmp_path: Path) -> None:
    cfg = config(SENDMAIL=str(stand_in(tmp_path, "echo '517 Syntax error.'; exit 67")))
    with pytest.raises(NoticeError) as e:
        notices.send(cfg, ["postmaster"], b"Subject: x\n\nx\n")
    assert str(e.value).endswith("exited 67: 517 Syntax error.")
    cfg = config(SENDMAIL=str(tmp_path / "missing"))
    with pytest.raises(NoticeError, match="missing: No such file"):
        notices.send(cfg, ["postmaster"], b"x")
    with pytest.raises(NoticeError, match="no recipient"):
        notices.send(cfg, [], b"x")


def test_a_hanging_sendmail_is_killed_with_what_it_started(tmp_path: Path) -> None:
    """A child of sendmail (submit) keeps its stdout: sendmail's exit is what counts, and on a
    timeout the whole group goes."""
    pidfile = tmp_path / "child"
    body = f"sleep 60 & echo $! > {pidfile}; wait"
    cfg = config(SENDMAIL=str(stand_in(tmp_path, body)), NOTIFY_TIMEOUT=1.0)
    started = time.monotonic()
    with pytest.raises(NoticeError, match=r"no answer within 1 s: killed"):
        notices.send(cfg, ["postmaster"], b"x")
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.05)
    else:
        pytest.fail("sendmail's child still runs")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def test_sendmail_exiting_while_its_child_holds_stdout_is_done(tmp_path: Path) -> None:
    cfg = config(SENDMAIL=str(stand_in(tmp_path, "(sleep 30 &) ; exit 0")), NOTIFY_TIMEOUT=5.0)
    started = time.monotonic()
    notices.send(cfg, ["postmaster"], b"x")
    assert time.monotonic() - started < 3


# ---- the daemon's outbox -----------------------------------------------------------------------
def test_outbox_never_blocks_and_caps_notices_in_flight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = tmp_path / "gate"
    body = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    cfg = config(SENDMAIL=str(stand_in(tmp_path, body)), NOTIFY_TIMEOUT=30.0)
    box = notices.Outbox(limit=2)
    caplog.set_level(logging.INFO, logger="avtool")
    started = time.monotonic()
    for i in range(3):
        box.post(cfg, f"m{i}", held(cfg))
    assert time.monotonic() - started < 0.5  # nobody waited for sendmail
    assert "notice for m2 not sent: 2 notices in flight already" in caplog.text
    gate.touch()
    for _ in range(200):
        if caplog.text.count("sent to 1 address(es)") == 2:
            break
        time.sleep(0.05)
    assert caplog.text.count("notice quarantined for m") == 2, caplog.text
    assert len(calls(tmp_path)) == 2
    box.post(cfg, "m3", held(cfg))  # room again
    for _ in range(200):
        if len(calls(tmp_path)) == 3:
            break
        time.sleep(0.05)
    assert len(calls(tmp_path)) == 3


def test_outbox_failure_is_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(SENDMAIL=str(stand_in(tmp_path, "exit 75")))
    box = notices.Outbox()
    box.post(cfg, "m1", held(cfg))
    for _ in range(200):
        if "not sent" in caplog.text:
            break
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "m1" in r.getMessage()]
    assert lines == [f"notice quarantined for m1 not sent: {cfg[K.SENDMAIL]} exited 75: no output"]
    assert os.path.exists(cfg[K.SENDMAIL])
