"""Daemon-side reloads: SIGUSR1 config (kept on error), SIGUSR2 virus DB, SIGHUP both.

No `sig` client here: with no pipe waiting, the daemon writes its answer to stderr."""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest

from tests.e2e.harness import wait_for
from tests.support.serve import EICAR, Daemon, mail

pytestmark = pytest.mark.clamd


def conf_path(d: Daemon) -> Any:
    return d.workdir / "avtool.conf"


def wait_log(d: Daemon, pattern: str) -> None:
    assert wait_for(lambda: re.search(pattern, d.log()) is not None, 15), d.log()


def test_config_reload_changes_behaviour(daemon: Daemon) -> None:
    path = conf_path(daemon)
    path.write_text(path.read_text() + '\n[policy]\ninfected = "drop"\n')
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_log(daemon, r"config: policy\.infected: \"reject\" -> \"drop\"")
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    assert daemon.filter(data, ctls) == "200 Ok\n"
    assert "\nS0 " in ctls[0].read_text()


def test_broken_config_is_refused_and_the_old_one_stays(daemon: Daemon) -> None:
    path = conf_path(daemon)
    path.write_text(path.read_text() + '\n[policy]\ninfected = "explode"\nnope = 1\n')
    daemon.proc.send_signal(signal.SIGUSR1)
    wait_log(daemon, r"config: NOT reloaded, 2 error\(s\)")
    assert "config error: policy.infected: must be one of" in daemon.log()
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    assert daemon.filter(data, ctls).startswith("550 ")  # still the old policy


def test_virus_reload_reports_each_clamd(daemon: Daemon, clamd_server: Any) -> None:
    daemon.proc.send_signal(signal.SIGUSR2)
    wait_log(daemon, rf"virus: clamd {re.escape(str(clamd_server.unix_socket))}: database")
    data, ctls = daemon.spool.message(mail())
    assert daemon.filter(data, ctls) == "200 Ok\n"  # serving throughout


def test_hup_reloads_both(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGHUP)
    wait_log(daemon, r"config: reloaded from .*0 change\(s\)")
    wait_log(daemon, r"virus: clamd ")
