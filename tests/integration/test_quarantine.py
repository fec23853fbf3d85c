"""``avtool quarantine`` and its store, on an entry the filter itself wrote (real clamd, EICAR)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avtool.errors import UsageError
from avtool.quarantine.store import Store, check_id
from tests.support.serve import EICAR, Daemon, config_for, mail, start_daemon

pytestmark = pytest.mark.clamd


@pytest.fixture(scope="module")
def held(
    clamd_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, bytes]]:
    """(a store holding one entry written by Pipeline._quarantine, the message it holds)."""
    qdir = tmp_path_factory.mktemp("held") / "quarantine"
    extra = f'\n[policy]\ninfected = "quarantine"\nquarantine_dir = "{qdir}"\n'
    d: Daemon = start_daemon(config_for(str(clamd_server.unix_socket), extra))
    try:
        data, ctls = d.spool.message(mail(attachment=EICAR))
        original = data.read_bytes()
        assert d.filter(data, ctls).startswith("200 ")
    finally:
        d.stop()
    yield qdir, original


@pytest.fixture
def store(held: tuple[Path, bytes], tmp_path: Path) -> Path:
    """A copy of the held store that this test may change."""
    q = tmp_path / "q"
    shutil.copytree(held[0], q, symlinks=True)
    os.chmod(q, 0o700)
    return q


@pytest.fixture
def conf(store: Path, clamd_server: Any, tmp_path: Path) -> Path:
    path = tmp_path / "avtool.conf"
    path.write_text(
        f'[clamd]\nbackends = ["{clamd_server.unix_socket}"]\n\n'
        f'[policy]\nquarantine_dir = "{store}"\n'
    )
    return path


def avtool(conf: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "avtool", "quarantine", *args, "-f", str(conf)]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=60, cwd="/", check=False)


def only_id(store: Path) -> str:
    (entry,) = [p.name for p in store.iterdir()]
    return entry


def test_store_parses_the_entry_the_filter_wrote(store: Path, held: tuple[Path, bytes]) -> None:
    with Store(str(store)) as s:
        (e,) = list(s.entries())
        assert s.data(e.id) == held[1]
    assert e.error is None
    assert e.sender == "sender@example.com" and e.recipients == ["rcpt@example.test"]
    assert e.names and e.names[0].startswith("Eicar")
    assert e.verdict == "infected" and e.origin == "filter" and e.size == len(held[1])
    assert e.received is not None
    age = datetime.datetime.now(datetime.UTC) - e.received
    assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1)


def test_corrupt_entry_is_listed_with_an_error(store: Path, conf: Path) -> None:
    good = only_id(store)
    bad = "20000101T000000-corrupt"
    shutil.copytree(store / good, store / bad)
    (store / bad / "verdict.json").write_text("{not json")
    missing = "20000101T000001-missing"
    shutil.copytree(store / good, store / missing)
    (store / missing / "verdict.json").unlink()
    r = avtool(conf, "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["id"] for row in rows] == [good, missing, bad]  # newest first
    assert "error" not in rows[0]
    assert "verdict.json" in rows[1]["error"] and "corrupt" in rows[2]["error"]
    assert r.stderr == b""


def test_symlinks_in_the_store_are_not_followed(store: Path, tmp_path: Path) -> None:
    good = only_id(store)
    outside = tmp_path / "outside"
    shutil.copytree(store / good, outside)
    (outside / "verdict.json").write_text('{"sender": "planted@evil.test"}')
    linked = "20991231T235959-linked"
    (store / linked).symlink_to(outside)
    (store / good / "data").unlink()
    (store / good / "data").symlink_to("/etc/shadow")
    with Store(str(store)) as s:
        entries = {e.id: e for e in s.entries()}
        assert entries[linked].sender is None and entries[linked].error
        assert "regular file" in (entries[good].error or "")
        for ident in (linked, good):
            with pytest.raises(UsageError):
                s.data(ident)
    assert (outside / "verdict.json").exists()


@pytest.mark.parametrize(
    "bad", ["", "..", "../x", "20260101T000000-a/b", "20260101T000000-x\n", "x", "a\nb"]
)
def test_malformed_ids_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        check_id(bad)


def test_cli_list_show_raw_delete(store: Path, conf: Path, held: tuple[Path, bytes]) -> None:
    r = avtool(conf, "list", "--json")
    row = json.loads(r.stdout)
    assert {"id", "received", "sender", "recipients", "names", "size", "verdict", "origin"} <= set(
        row
    )
    assert row["received"].endswith("Z") and row["recipients"] == ["rcpt@example.test"]
    ident = row["id"]
    shown = avtool(conf, "show", ident)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert "sender:     <sender@example.com>" in text and "MIME structure:" in text
    assert any("<- Eicar" in line for line in text.splitlines())  # the part carrying EICAR
    raw = avtool(conf, "show", ident, "--raw")
    assert raw.returncode == 0 and raw.stdout == held[1]
    gone = avtool(conf, "delete", ident)
    assert gone.returncode == 0 and list(store.iterdir()) == []
    again = avtool(conf, "delete", ident)
    assert again.returncode == 2
    err = again.stderr.decode()
    assert err.count("\n") == 1 and "no such quarantine entry" in err


def test_cli_purge_older_than_zero_empties(store: Path, conf: Path) -> None:
    shutil.copytree(store / only_id(store), store / "20000101T000000-old")
    week = avtool(conf, "purge", "--older-than", "7")
    assert week.returncode == 0 and len(list(store.iterdir())) == 1
    r = avtool(conf, "purge", "--older-than", "0")
    assert r.returncode == 0, r.stderr
    assert list(store.iterdir()) == []


@pytest.mark.parametrize("ident", ["20260101T000000-nothere", "../../etc/passwd"])
def test_cli_unknown_or_malformed_id_exit_2(conf: Path, ident: str) -> None:
    r = avtool(conf, "show", ident)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_other_users_get_a_permission_line(conf: Path) -> None:
    r = avtool(conf, "list", "--json", user="nobody")
    assert r.returncode == 2
    assert r.stderr.decode() == (
        "avtool: quarantine: permission denied: only root and the filter's user (courier) may\n"
    )
    assert r.stdout == b""
