"""A config reload does what each changed key's reload kind says (config/kinds.py, Reload):
a live key applies to the next message on the same Engine, an engine key builds a new Engine,
a restart key is applied at the next start and the answer says so.

The answers and the stats come from ``avtool sig``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.support.serve import EICAR, Daemon, mail

pytestmark = pytest.mark.clamd


def sig(d: Daemon, *args: str) -> str:
    cmd = [sys.executable, "-m", "avtool", "sig", "-f", str(d.workdir / "avtool.conf")]
    cmd += ["-p", str(d.proc.pid), "-t", "10", *args]
    result = subprocess.run(cmd, cwd=d.workdir, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def reload_config(d: Daemon, old: str, new: str) -> str:
    """Replace ``old`` by ``new`` in the daemon's config; the answer of ``sig reload config``."""
    conf = d.workdir / "avtool.conf"
    text = conf.read_text()
    assert old in text, text
    conf.write_text(text.replace(old, new, 1))
    return sig(d, "reload", "config")


def clamd_scans(d: Daemon) -> int:
    (clamd,) = json.loads(sig(d, "stats", "--json"))["clamd"]
    scans: int = clamd["scans"]
    return scans


def test_live_engine_and_restart_keys_on_reload(daemon: Daemon, clamd_server: Any) -> None:
    assert daemon.filter(*daemon.spool.message(mail(attachment=EICAR))).startswith("550 ")
    assert clamd_scans(daemon) == 1

    # live (policy.infected) and restart (serve.max_scans, serve.manual_start) keys
    serve = '[policy]\ninfected = "drop"\n\n[serve]\nmax_scans = 3\nmanual_start = true\n'
    answer = reload_config(daemon, "[serve]\n", serve)
    assert "3 change(s)" in answer
    assert "config: serve.max_scans takes effect at the next restart" in answer
    assert "config: serve.manual_start takes effect at the next restart" in answer
    assert "policy.infected takes effect" not in answer
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    assert daemon.filter(data, ctls) == "200 Ok\n"  # the new policy: dropped, not rejected
    assert "\nS0 " in ctls[0].read_text()
    assert clamd_scans(daemon) == 2  # the same Engine: its backend kept its counters

    # an engine key: the new Engine scans on the new (missing) backend, so the mail waits
    gone = str(clamd_server.unix_socket) + ".gone"
    answer = reload_config(
        daemon, f'backends = ["{clamd_server.unix_socket}"]', f'backends = ["{gone}"]'
    )
    assert re.search(r"config: clamd\.backends: .* -> \[.*\.gone\"\]", answer), answer
    assert "takes effect at the next restart" not in answer
    assert daemon.filter(*daemon.spool.message(mail(attachment=EICAR))).startswith("432 ")
