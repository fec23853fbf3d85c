"""``avtool sig`` against a real ``avtool serve --debug`` and the real test clamd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.serve_support import EICAR, Daemon, mail

pytestmark = pytest.mark.clamd
REPO = Path(__file__).resolve().parents[2]


def sig(d: Daemon, *args: str, pid: int | None = None, timeout: str = "10") -> Any:
    cmd = [sys.executable, "-m", "avtool", "sig", "-f", str(d.workdir / "avtool.conf")]
    cmd += ["-p", str(pid or d.proc.pid), "-t", timeout, *args]
    return subprocess.run(cmd, cwd=d.workdir, capture_output=True, text=True, timeout=60)


def test_reload_config_reports_the_change(daemon: Daemon) -> None:
    conf = daemon.workdir / "avtool.conf"
    conf.write_text(conf.read_text() + '\n[policy]\ninfected = "drop"\n')
    result = sig(daemon, "reload", "config")
    assert result.returncode == 0, result.stderr
    assert 'config: policy.infected: "reject" -> "drop"' in result.stdout
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    assert daemon.filter(data, ctls) == "200 Ok\n"
    assert not (daemon.workdir / "avtool_sig.pipe").exists()


def test_broken_config_exit_1_old_one_kept(daemon: Daemon) -> None:
    conf = daemon.workdir / "avtool.conf"
    conf.write_text(conf.read_text() + "\n[log]\nverbosity = 7\n")
    result = sig(daemon, "reload", "config")
    assert result.returncode == 1
    assert "config error: log.verbosity: must be <= 3" in result.stdout
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    assert daemon.filter(data, ctls).startswith("550 ")


def test_reload_virus_detects_a_new_signature(daemon: Daemon, clamd_server: Any) -> None:
    sample = b"avtool reload test sample " + str(time.time()).encode() + b"\n"
    data, ctls = daemon.spool.message(sample)
    assert daemon.filter(data, ctls) == "200 Ok\n"
    import hashlib

    body = data.read_bytes()
    line = f"{hashlib.md5(body).hexdigest()}:{len(body)}:Avtool-Reload-Test\n"  # noqa: S324
    added = clamd_server.add_signature_file("reload-test.hdb", line)
    try:
        result = sig(daemon, "reload", "virus")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"virus: clamd {clamd_server.unix_socket}: database" in result.stdout
        data2, ctls2 = daemon.spool.message(sample)
        assert daemon.filter(data2, ctls2).startswith("550 5.7.1 Virus found: Avtool-Reload-Test")
    finally:
        added.unlink()
        clamd_server.command("RELOAD")
        time.sleep(0.5)


def test_stats_json_and_prometheus(daemon: Daemon) -> None:
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    daemon.filter(data, ctls)
    stats = json.loads(sig(daemon, "stats", "--json").stdout)
    assert stats["messages"] == 1 and stats["infected"] == 1 and stats["reject"] == 1
    assert stats["clamd"][0]["version"].startswith("ClamAV ")
    prom = sig(daemon, "stats", "--prometheus").stdout
    assert 'avtool_messages_total{verdict="infected"} 1' in prom
    assert "# TYPE avtool_uptime_seconds gauge" in prom
    status = sig(daemon, "status")
    assert status.returncode == 0 and f"pid {daemon.proc.pid}" in status.stdout


def _deaf_process() -> subprocess.Popen[bytes]:
    """A process that ignores every signal sig sends: it never answers."""
    code = "import signal, time\nfor s in (1, 10, 12, 23): signal.signal(s, signal.SIG_IGN)\n"
    return subprocess.Popen([sys.executable, "-c", code + "time.sleep(60)"])


def test_no_answer_exit_5_within_the_timeout(daemon: Daemon) -> None:
    deaf = _deaf_process()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        result = sig(daemon, "reload", pid=deaf.pid, timeout="1")
        assert result.returncode == 5 and "no answer within 1 s" in result.stderr
        assert time.monotonic() - started < 8
    finally:
        deaf.kill()


def test_concurrent_request_exit_4(daemon: Daemon) -> None:
    deaf = _deaf_process()
    try:
        time.sleep(0.3)
        cmd = [sys.executable, "-m", "avtool", "sig", "-f", str(daemon.workdir / "avtool.conf")]
        first = subprocess.Popen([*cmd, "-p", str(deaf.pid), "-t", "3"], cwd=daemon.workdir)
        pipe = daemon.workdir / "avtool_sig.pipe"
        deadline = time.monotonic() + 10
        while not pipe.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = sig(daemon, "reload")
        assert second.returncode == 4, second.stderr
        assert "in progress" in second.stderr
        first.wait(20)
    finally:
        deaf.kill()


def test_not_running_exit_3(daemon: Daemon) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    result = sig(daemon, "reload", pid=int(gone.stdout))
    assert result.returncode == 3 and "not running" in result.stderr
    conf = daemon.workdir / "avtool.conf"
    cmd = [sys.executable, "-m", "avtool", "sig", "-f", str(conf), "status"]
    cmd += ["--set", f"serve.pid_file={daemon.workdir}/none.pid"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 3 and "no pid in" in result.stderr


def test_stale_pipe_is_removed_with_a_warning(daemon: Daemon) -> None:
    os.mkfifo(daemon.workdir / "avtool_sig.pipe")  # left by a client that died
    result = sig(daemon, "reload", "config")
    assert result.returncode == 0
    assert "removing a stale pipe" in result.stderr


def test_sudoers_snippet_is_valid() -> None:
    if shutil.which("visudo") is None:
        pytest.skip("sudo not installed")
    path = REPO / "share" / "sudoers.avtool-sig"
    subprocess.run(["visudo", "-cf", str(path)], check=True, capture_output=True)
    rule = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert rule == ["clamav ALL = (courier) NOPASSWD: /usr/local/bin/avtool sig -l reload virus"]


def test_reload_storm_under_load(daemon: Daemon) -> None:
    """500 messages through the socket while `sig reload config` runs every 100 ms (a virus
    reload now and then): every verdict right, no reload failed."""
    jobs = [(i % 10 == 0, daemon.spool.message(mail(attachment=EICAR if i % 10 == 0 else None)))
            for i in range(500)]  # fmt: skip
    stop = threading.Event()
    reloads: list[int] = []

    def storm() -> None:
        while not stop.is_set():
            what = "virus" if len(reloads) % 10 == 5 else "config"
            reloads.append(sig(daemon, "reload", what).returncode)
            time.sleep(0.1)

    thread = threading.Thread(target=storm)
    thread.start()
    try:
        from concurrent.futures import ThreadPoolExecutor

        replies: list[str] = []
        until = time.monotonic() + 60
        with ThreadPoolExecutor(4) as pool:  # again until the storm has had its reloads
            while not replies or (len(reloads) < 8 and time.monotonic() < until):
                replies += pool.map(lambda j: daemon.filter(*j[1]), jobs)
    finally:
        stop.set()
        thread.join(60)
    rounds = len(replies) // len(jobs)
    for (infected, _), reply in zip(jobs * rounds, replies, strict=True):
        assert reply.startswith("550 " if infected else "200 "), reply
    assert len(reloads) >= 8 and all(rc == 0 for rc in reloads), reloads


def test_dash_l_sends_the_answer_to_syslog_mail(daemon: Daemon) -> None:
    import socket

    dev_log = Path("/dev/log")
    if dev_log.exists():
        pytest.skip("/dev/log has another listener")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(dev_log))
        try:
            result = sig(daemon, "-l", "reload", "config")
            sink.settimeout(5)
            record = sink.recv(4096).decode()
        finally:
            dev_log.unlink()
    assert result.returncode == 0 and result.stdout == ""
    assert record.startswith("<22>")  # facility mail (2) * 8 + severity info (6)
    assert "avtool-sig" in record and "config: reloaded" in record


def test_help_shows_the_paths() -> None:
    from typer.testing import CliRunner

    from avtool.cli.app import app

    out = CliRunner().invoke(app, ["sig", "--help"], env={"COLUMNS": "200"}).output
    assert "Config file: " in out and "Pid file: /" in out and "Answers pipe: /" in out
