"""``avtool batch-test``: the socket framing on stdin, the daemon pipeline, replies on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import EICAR, Spool, config_for, mail, request_bytes

pytestmark = pytest.mark.clamd


def run_batch(conf: Path, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "avtool", "batch-test", "-f", str(conf), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)


def spool_and_config(clamd_server: Any, tmp_path: Path, policy: str) -> tuple[Path, Spool]:
    """A spool under ``tmp_path`` and a config file for it with ``policy`` lines."""
    spool = Spool(tmp_path / "spool")
    spool.root.mkdir()
    conf = tmp_path / "avtool.conf"
    extra = f"\n[policy]\n{policy}\n"
    conf.write_text(
        config_for(str(clamd_server.unix_socket), extra).replace("@SPOOL@", str(spool.root))
    )
    return conf, spool


@pytest.fixture
def setup(clamd_server: Any, tmp_path: Path) -> tuple[Path, Spool]:
    return spool_and_config(clamd_server, tmp_path, 'infected = "drop"')


def test_replies_in_order_and_exit_status(setup: tuple[Path, Spool]) -> None:
    conf, spool = setup
    clean = spool.message(mail())
    infected = spool.message(mail(attachment=EICAR), ["a@example.test", "b@example.test"])
    result = run_batch(conf, request_bytes(*clean) + request_bytes(*infected))
    assert result.stdout.decode().splitlines() == ["200 Ok", "200 Ok"]
    assert result.returncode == 1  # a virus was found
    assert "\nS1 " in infected[1][0].read_text()  # dropped for real: both recipients marked
    assert b"Traceback" not in result.stderr


def test_dry_run_touches_nothing(setup: tuple[Path, Spool]) -> None:
    conf, spool = setup
    data, ctls = spool.message(mail(attachment=EICAR))
    before = ctls[0].read_text(), data.read_bytes()
    result = run_batch(conf, request_bytes(data, ctls), "--dry-run")
    assert result.stdout == b"200 Ok\n"
    assert (ctls[0].read_text(), data.read_bytes()) == before
    assert b"would drop" in result.stderr


def test_bad_group_is_reported_and_the_rest_goes_on(setup: tuple[Path, Spool]) -> None:
    conf, spool = setup
    clean = spool.message(mail())
    result = run_batch(conf, b"/only-a-data-file\n\n" + request_bytes(*clean))
    lines = result.stdout.decode().splitlines()
    assert lines[0][:1] in "45" and lines[1] == "200 Ok"
    assert result.returncode == 3
    assert b"bad request" in result.stderr


def test_every_fragment_is_unchecked(clamd_server: Any, tmp_path: Path) -> None:
    """clamd answers OK for a message/partial without looking (courier/unscannable.py): the
    blocking pipeline (batch-test, TCP pools) calls each variant unchecked, as the loop does
    (test_evasion.py), and a forwarded message and a bounce still pass."""
    from tests.support import evasion
    from tests.unit.test_unscannable import NOT_FRAGMENTS

    conf, spool = spool_and_config(clamd_server, tmp_path, 'unchecked = "reject"')
    fragments = [spool.message(build(EICAR)) for build in evasion.FRAGMENTS.values()]
    passing = [spool.message(message) for message in NOT_FRAGMENTS.values()]
    result = run_batch(conf, b"".join(request_bytes(*m) for m in fragments + passing))
    lines = result.stdout.decode().splitlines()
    assert len(lines) == len(fragments) + len(passing)
    for name, line in zip(evasion.FRAGMENTS, lines, strict=False):
        assert line.startswith("550 5.7.1 Message could not be scanned: message/"), name
    assert lines[len(fragments) :] == ["200 Ok"] * len(passing)
    assert b"Traceback" not in result.stderr
