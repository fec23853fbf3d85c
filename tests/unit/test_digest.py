"""``avtool quarantine digest`` (what arrived since the last one, the stamp written only after
a send) and ``purge`` by policy.quarantine_days, on entries in the daemon's format."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avtool.cli.app import app
from tests.unit.test_notices import calls, stand_in

runner = CliRunner()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="quarantine commands: root or courier")


def entry(store: Path, ident: str, sender: str = "s@example.com", names: str = "Eicar") -> None:
    d = store / ident
    d.mkdir(mode=0o700)
    (d / "data").write_bytes(b"Subject: held\n\nbody\n")
    info = {"verdict": "Infected", "names": [names], "sender": sender,
            "recipients": ["r@example.test"], "message_id": None, "time": ident[:15]}  # fmt: skip
    (d / "verdict.json").write_text(json.dumps(info))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    q = tmp_path / "q"
    q.mkdir(mode=0o700)
    return q


def conf(tmp_path: Path, store: Path, extra: str = "", sendmail: str = "exit 0") -> Path:
    path = tmp_path / "avtool.conf"
    path.write_text(
        f'[policy]\nquarantine_dir = "{store}"\n{extra}\n'
        f'[notify]\nsendmail = "{stand_in(tmp_path, sendmail)}"\npostmaster = ["pm@example.test"]\n'
    )
    return path


def digest(path: Path, *args: str) -> tuple[int, str]:
    """The command as the daily job runs it (the CLI edge turns errors into one line)."""
    cmd = [sys.executable, "-m", "avtool", "quarantine", "digest", *args, "-f", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout + done.stderr


def sent_bodies(tmp_path: Path) -> list[str]:
    out = []
    for call in calls(tmp_path):
        msg = email.message_from_string(str(call["stdin"]), policy=email.policy.default)
        assert call["argv"] == ["-f", "", "--", "pm@example.test"]
        out.append(msg.get_body().get_content())  # type: ignore[union-attr]
    return out


def test_digest_lists_what_is_new_since_the_last_one(tmp_path: Path, store: Path) -> None:
    path = conf(tmp_path, store)
    entry(store, "20261130T100000-a", sender="one@example.com")
    entry(store, "20261130T110000-b", sender="two@example.com", names="Win.Test.X")
    assert digest(path)[0] == 0
    (first,) = sent_bodies(tmp_path)
    assert "2 message(s) since the quarantine began" in first
    assert "20261130T100000-a" in first and "from <two@example.com>" in first
    assert "Win.Test.X" in first
    code, out = digest(path)  # nothing new: no mail, exit 0
    assert code == 0 and out.startswith("nothing quarantined since 20"), out
    assert len(calls(tmp_path)) == 1
    # an entry of the same second as the newest listed, named to sort before it, and a later one
    entry(store, "20261130T110000-0", sender="three@example.com")
    entry(store, "20261130T120000-c", sender="four@example.com")
    assert digest(path)[0] == 0
    second = sent_bodies(tmp_path)[1]
    assert "2 message(s) since 20" in second
    assert "three@example.com" in second and "four@example.com" in second
    assert "one@example.com" not in second and "two@example.com" not in second
    assert (store / ".digest-stamp").stat().st_mode & 0o777 == 0o600


def test_a_digest_that_could_not_be_sent_is_sent_whole_next_time(
    tmp_path: Path, store: Path
) -> None:
    entry(store, "20261130T100000-a")
    code, out = digest(conf(tmp_path, store, sendmail="echo '451 try later'; exit 75"))
    assert code == 3 and out.strip().endswith("exited 75: 451 try later"), out
    assert not (store / ".digest-stamp").exists()
    assert digest(conf(tmp_path, store))[0] == 0
    assert "20261130T100000-a" in sent_bodies(tmp_path)[-1]


def test_digest_print_sends_nothing_and_scheduled_obeys_notify_digest(
    tmp_path: Path, store: Path
) -> None:
    entry(store, "20261130T100000-a")
    path = conf(tmp_path, store)
    code, out = digest(path, "--print")
    assert code == 0 and "Auto-Submitted: auto-generated" in out and "20261130T100000-a" in out
    assert digest(path, "--scheduled") == (0, "")  # notify.digest = "off"
    assert calls(tmp_path) == [] and not (store / ".digest-stamp").exists()
    daily = conf(tmp_path, store, extra="")
    daily.write_text(daily.read_text() + 'digest = "daily"\n')
    assert digest(daily, "--scheduled")[0] == 0
    assert len(calls(tmp_path)) == 1


def test_purge_without_older_than_uses_policy_quarantine_days(tmp_path: Path, store: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for days in (2, 9, 11, 40):
        stamp = (now - datetime.timedelta(days=days)).strftime("%Y%m%dT%H%M%S")
        entry(store, f"{stamp}-d{days}")
    result = runner.invoke(app, ["quarantine", "purge", "-f", str(conf(tmp_path, store))])
    assert result.exit_code == 0 and result.output == "purged 1 message(s)\n"  # default 30
    path = conf(tmp_path, store, "quarantine_days = 10")
    result = runner.invoke(app, ["quarantine", "purge", "-f", str(path)])
    assert result.output == "purged 1 message(s)\n"
    assert sorted(p.name[16:] for p in store.iterdir()) == ["d2", "d9"]
    path = conf(tmp_path, store, "quarantine_days = 0")
    result = runner.invoke(app, ["quarantine", "purge", "-f", str(path)])
    assert result.exit_code == 0 and "kept, none purged" in result.output
    assert len(list(store.iterdir())) == 2
    result = runner.invoke(app, ["quarantine", "purge", "--older-than", "0", "-f", str(path)])
    assert result.output == "purged 2 message(s)\n" and list(store.iterdir()) == []
