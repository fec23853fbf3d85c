"""Notices and the daily job through real Courier and real clamd, as share/install.sh installs
them (issue 17): the postmaster notice of a quarantined EICAR arrives with a null envelope
sender, the recipients learn of it and the envelope sender does not, and the daily job (the
cron file install.sh wrote) sends the digest and purges by policy.quarantine_days."""

from __future__ import annotations

import datetime
import email
import email.policy
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.test_avtool import (  # noqa: F401 - fixtures: installed once, enabled per test
    CONF,
    EICAR,
    QUARANTINE,
    attachment_mail,
    avtool,
    installed,
)

pytestmark = pytest.mark.e2e

DAILY = Path("/usr/local/lib/avtool/daily-check")
POSTMASTER = f"avtest3@{harness.DOMAIN}"
OTHER = f"avtest2@{harness.DOMAIN}"


@pytest.fixture
def empty_quarantine(avtool: Any) -> Iterator[Any]:  # noqa: F811
    def clear() -> None:
        for p in QUARANTINE.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    clear()
    yield avtool
    clear()


def test_install_sh_installs_the_daily_job(installed: str) -> None:  # noqa: F811
    cron = Path("/etc/cron.d/avtool-local")  # /etc/cron.d/avtool is the package's conffile
    assert stat.S_IMODE(cron.stat().st_mode) == 0o644 and cron.stat().st_uid == 0
    (line,) = [x for x in cron.read_text().splitlines() if x[:1].isdigit()]
    assert line.endswith(
        "root [ -d /run/systemd/system ] || [ -x /usr/lib/avtool/daily-check ] || "
        f"[ ! -x {DAILY} ] || {DAILY}"
    )
    assert not Path("/etc/cron.d/avtool").exists()
    assert DAILY.stat().st_uid == 0 and stat.S_IMODE(DAILY.stat().st_mode) == 0o755
    assert "AVTOOL=/usr/local/bin/avtool\n" in DAILY.read_text()
    assert "installed the daily job" in installed
    shipped = Path("/usr/local/share/avtool/notices")
    assert sorted(p.name for p in shipped.iterdir()) == sorted(
        p.name for p in (Path(__file__).resolve().parents[2] / "share" / "notices").iterdir()
    )
    if Path("/run/systemd/system").is_dir():
        assert Path("/etc/systemd/system/avtool-local-daily.timer").exists()


def parsed(path: Path) -> email.message.EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_quarantined_eicar_notices_and_the_daily_digest_and_purge(empty_quarantine: Any) -> None:
    empty_quarantine(
        '[policy]\ninfected = "quarantine"\n'
        f'[notify]\npostmaster = ["{POSTMASTER}"]\nrecipients = true\ndigest = "daily"\n'
    )
    # The envelope sender (avtest) is also a recipient: it gets no notice; avtest2 does.
    rcpts = [harness.ADDRESS, OTHER]
    mark = harness.log_mark()
    code, text = harness.send(attachment_mail(EICAR, "e.com", "notice me"), recipients=rcpts)
    assert code == 250, text
    (entry,) = [p.name for p in QUARANTINE.iterdir()]
    (notice,) = harness.wait_for_mail(1, timeout=30, user="avtest3")
    msg = parsed(notice)
    assert msg["Return-Path"] == "<>"  # the null envelope sender, as Courier delivered it
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Precedence"] == "bulk"
    body = msg.get_content()
    assert f"avtool quarantine release {entry}\n" in body and "Eicar" in body
    assert f"<{harness.ADDRESS}>" in body
    (told,) = harness.wait_for_mail(1, timeout=30, user="avtest2")
    assert f"id:     {entry}" in parsed(told).get_content()
    harness.wait_for_log(r"notice recipient for \S+ sent to 1 address", since=mark)
    assert harness.mail_files("avtest") == []  # the sender: nothing, nor the message itself

    # The daily job as cron runs it: the digest to the postmaster (the doctor fails on the
    # test signatures, as in test_avtool; the quarantine steps do not)
    daily = subprocess.run([str(DAILY)], capture_output=True, text=True, timeout=300, check=False)
    assert "== avtool quarantine" not in daily.stdout, daily
    digest = [p for p in harness.wait_for_mail(2, timeout=30, user="avtest3") if p != notice]
    assert "1 message(s) since the quarantine began" in parsed(digest[0]).get_content()
    assert (QUARANTINE / ".digest-stamp").stat().st_uid == QUARANTINE.stat().st_uid  # courier's
    # the next day: nothing new, no digest; an entry past policy.quarantine_days is purged
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=31)).strftime(
        "%Y%m%dT%H%M%S"
    )
    os.rename(QUARANTINE / entry, QUARANTINE / (old + entry[15:]))
    daily = subprocess.run([str(DAILY)], capture_output=True, text=True, timeout=300, check=False)
    assert "== avtool quarantine" not in daily.stdout, daily
    assert [p.name for p in QUARANTINE.iterdir()] == [".digest-stamp"]
    assert len(harness.mail_files("avtest3")) == 2
    assert CONF.exists()
