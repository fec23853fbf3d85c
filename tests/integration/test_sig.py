"""``avtool sig`` against a real ``avtool serve --debug`` and the real test clamd.

sig runs as a subprocess with cwd = the daemon's workdir and ``-p PID``: the pipe is then
./avtool_sig.pipe, where serve --debug answers (avfilter_sig -p and tavfilter did the same).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import EICAR, Daemon, config_for, mail, start_daemon

pytestmark = pytest.mark.clamd
REPO = Path(__file__).resolve().parents[2]


def sig(
    d: Daemon, *args: str, pid: int | None = None, timeout: str = "10", prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, sys.executable, "-m", "avtool", "sig", "-f", str(d.workdir / "avtool.conf")]
    cmd += ["-p", str(pid or d.proc.pid), "-t", timeout, *args]
    return subprocess.run(cmd, cwd=d.workdir, capture_output=True, text=True, timeout=60)


def test_reload_config_reports_the_change_and_applies_it(daemon: Daemon) -> None:
    conf = daemon.workdir / "avtool.conf"
    conf.write_text(conf.read_text() + '\n[policy]\ninfected = "drop"\n')
    result = sig(daemon, "reload", "config")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"config: reloaded from {conf}, 1 change(s)\n")
    assert 'config: policy.infected: "reject" -> "drop"' in result.stdout
    assert "virus:" not in result.stdout  # SIGUSR1: the config only
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    assert daemon.filter(data, ctls) == "200 Ok\n"  # dropped: accepted, then not delivered
    assert not (daemon.workdir / "avtool_sig.pipe").exists()


def test_broken_config_exit_1_every_error_listed_old_one_kept(daemon: Daemon) -> None:
    conf = daemon.workdir / "avtool.conf"
    conf.write_text(conf.read_text() + '\n[log]\nverbosity = 7\n[policy]\ninfected = "bogus"\n')
    result = sig(daemon, "reload", "config")
    assert result.returncode == 1
    assert "config: NOT reloaded, 2 error(s); the old one stays" in result.stdout
    assert "config error: log.verbosity: must be <= 3" in result.stdout
    assert "config error: policy.infected: must be one of" in result.stdout
    assert "default pid file and pipe used" in result.stderr  # sig's own reading of it
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    assert daemon.filter(data, ctls).startswith("550 ")  # still the old policy: reject


def _daily(version: int, files: dict[str, str]) -> bytes:
    """An unsigned daily database (.cud: the CVD layout that clamd loads without a signature)
    whose version clamd reports in VERSION: a 512-byte header, then a tar.gz holding
    daily.info (the same header and each file's size and sha256) and the files."""
    stime = int(time.time())
    head = f"ClamAV-VDB:{time.strftime('%d %b %Y %H-%M')} +0000:{version}:{len(files)}:90:"
    head += f"{'0' * 32}:X:avtool-test:{stime}"
    info = head + "\n"
    info += "".join(
        f"{name}:{len(t.encode())}:{hashlib.sha256(t.encode()).hexdigest()}\n"
        for name, t in files.items()
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in {"daily.info": info, **files}.items():
            entry = tarfile.TarInfo(name)
            entry.size, entry.mtime = len(text.encode()), stime
            tar.addfile(entry, io.BytesIO(text.encode()))
    return head.encode().ljust(512, b" ") + buf.getvalue()


def _clamd_db(clamd_server: Any) -> str:
    reply: str = clamd_server.command("VERSION")
    return reply.split("/")[1] if "/" in reply else "unknown"


def _reload_clamd_until(clamd_server: Any, db: str) -> None:
    clamd_server.command("RELOAD")
    deadline = time.monotonic() + 20
    while _clamd_db(clamd_server) != db:
        assert time.monotonic() < deadline, f"clamd never showed database {db}"
        time.sleep(0.1)


def test_reload_virus_new_signature_and_versions(daemon: Daemon, clamd_server: Any) -> None:
    sample = b"avtool reload test sample " + str(time.time_ns()).encode() + b"\n"
    data, ctls = daemon.spool.message(sample)
    assert daemon.filter(data, ctls) == "200 Ok\n"
    body = data.read_bytes()
    hdb = f"{hashlib.md5(body).hexdigest()}:{len(body)}:Avtool-Reload-Test\n"  # noqa: S324
    daily = Path(clamd_server.db_dir) / "daily.cud"
    try:
        daily.write_bytes(_daily(70001, {"daily.ign2": "Avtool-Nothing\n"}))
        _reload_clamd_until(clamd_server, "70001")
        daily.write_bytes(_daily(70002, {"daily.hdb": hdb}))  # as freshclam would replace it

        result = sig(daemon, "reload", "virus", timeout="30")

        assert result.returncode == 0, result.stdout + result.stderr
        (line,) = result.stdout.splitlines()
        prefix = f"virus: clamd {clamd_server.unix_socket}: database 70001 -> 70002 in "
        assert line.startswith(prefix) and line.endswith(" s"), line
        data2, ctls2 = daemon.spool.message(sample)
        assert daemon.filter(data2, ctls2).startswith("550 5.7.1 Virus found: Avtool-Reload-Test")
    finally:
        daily.unlink(missing_ok=True)
        _reload_clamd_until(clamd_server, "unknown")  # the session clamd, as other tests expect


def test_reload_both_on_sighup(daemon: Daemon) -> None:
    result = sig(daemon)  # no argument: reload config and virus database, as avfilter_sig did
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("config: reloaded from ") and lines[0].endswith("0 change(s)")
    assert lines[-1].startswith("virus: clamd ")


def test_stats_json_prometheus_table_and_status(daemon: Daemon) -> None:
    for attachment in (EICAR, None):
        data, ctls = daemon.spool.message(mail(attachment=attachment))
        daemon.filter(data, ctls)
    result = sig(daemon, "stats", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["pid"] == daemon.proc.pid and stats["socket"] == str(daemon.socket_path)
    assert (stats["messages"], stats["infected"], stats["clean"]) == (2, 1, 1)
    assert (stats["reject"], stats["accept"]) == (1, 1)
    assert isinstance(stats["p50_ms"], float) and stats["uptime_s"] > 0
    (clamd,) = stats["clamd"]
    assert clamd["reachable"] is True and clamd["scans"] == 2 and clamd["errors"] == 0
    assert clamd["in_flight"] == 0 and clamd["aside"] is False  # nothing scanning now
    assert clamd["version"].startswith("ClamAV ")

    prom = sig(daemon, "stats", "--prometheus").stdout
    assert 'avtool_messages_total{verdict="infected"} 1' in prom
    assert 'avtool_messages_total{verdict="clean"} 1' in prom
    assert f'avtool_clamd_scans_total{{backend="{stats["clamd"][0]["address"]}"}} 2' in prom
    assert "# TYPE avtool_uptime_seconds gauge" in prom

    table = sig(daemon, "stats")
    assert table.returncode == 0 and "messages" in table.stdout and "clamd" in table.stdout

    status = sig(daemon, "status")
    assert status.returncode == 0
    conf, pid = str(daemon.workdir / "avtool.conf"), str(daemon.proc.pid)
    after = [sys.executable, "-m", "avtool", "sig", "stats", "--json", "-t", "10", "-p", pid]
    run = subprocess.run([*after, "-f", conf], cwd=daemon.workdir, capture_output=True, text=True)
    assert run.returncode == 0 and json.loads(run.stdout)["pid"] == daemon.proc.pid  # after it
    assert status.stdout.startswith(f"avtool is running: pid {daemon.proc.pid}, up ")
    assert f"socket {daemon.socket_path}" in status.stdout


def _lookalike(code: str, **kw: Any) -> subprocess.Popen[bytes]:
    """A process whose command line is an avtool serve's (``python DIR/avtool serve``), so that
    sig run as root accepts to signal it, running ``code``; started once it prints a line."""
    directory = Path(tempfile.mkdtemp(prefix="avl", dir="/tmp"))
    directory.chmod(0o755)
    script = directory / "avtool"
    script.write_text(code)
    script.chmod(0o644)
    proc = subprocess.Popen([sys.executable, str(script), "serve"], stdout=subprocess.PIPE, **kw)
    assert proc.stdout is not None and proc.stdout.readline()  # its handlers are in place
    shutil.rmtree(directory)
    return proc


def _deaf_process() -> subprocess.Popen[bytes]:
    """A process that ignores every signal sig sends: it never answers."""
    code = "import signal, time\nfor s in (1, 10, 12, 23): signal.signal(s, signal.SIG_IGN)\n"
    return _lookalike(code + "print(1, flush=True)\ntime.sleep(60)\n")


def test_no_answer_exit_5_within_the_timeout(daemon: Daemon) -> None:
    deaf = _deaf_process()
    try:
        for args in (("reload",), ("status",)):
            started = time.monotonic()
            result = sig(daemon, *args, pid=deaf.pid, timeout="1")
            assert result.returncode == 5, result.stderr
            assert f"no answer from process {deaf.pid} within 1 s" in result.stderr
            assert time.monotonic() - started < 8
        assert not (daemon.workdir / "avtool_sig.pipe").exists()
    finally:
        deaf.kill()
        deaf.wait()


def test_process_that_dies_on_the_signal_exit_3_at_once(daemon: Daemon) -> None:
    # SIGHUP's default action ends it (set again: a runner under nohup(1) passes it ignored)
    sleeper = _lookalike(
        "import signal, time\nsignal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
        "print(1, flush=True)\ntime.sleep(60)\n"
    )
    try:
        started = time.monotonic()
        result = sig(daemon, "reload", pid=sleeper.pid, timeout="60")
        assert result.returncode == 3 and "ended before answering" in result.stderr
        assert time.monotonic() - started < 10
    finally:
        sleeper.kill()
        sleeper.wait()


def test_concurrent_request_exit_4(daemon: Daemon) -> None:
    deaf = _deaf_process()
    pipe = daemon.workdir / "avtool_sig.pipe"
    try:
        cmd = [sys.executable, "-m", "avtool", "sig", "-f", str(daemon.workdir / "avtool.conf")]
        first = subprocess.Popen([*cmd, "-p", str(deaf.pid), "-t", "5"], cwd=daemon.workdir,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 10
        while not pipe.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        second = sig(daemon, "reload")
        assert second.returncode == 4, second.stderr
        assert "another avtool sig request is in progress" in second.stderr
        first.kill()  # a client killed mid-request: its pipe stays behind, stale
        first.wait()
        assert pipe.exists()
        third = sig(daemon, "reload", "config")
        assert third.returncode == 0, third.stderr
        assert "removed a stale pipe" in third.stderr
    finally:
        deaf.kill()
        deaf.wait()


def test_not_running_exit_3(daemon: Daemon) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    result = sig(daemon, "reload", pid=int(gone.stdout))
    assert result.returncode == 3 and "not running: no process" in result.stderr
    conf = daemon.workdir / "avtool.conf"
    base = [sys.executable, "-m", "avtool", "sig", "-f", str(conf), "status", "--set"]
    result = subprocess.run([*base, f"serve.pid_file={daemon.workdir}/none.pid"],
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 3 and "no pid in" in result.stderr
    stale = daemon.workdir / "stale.pid"
    stale.write_text(gone.stdout)
    result = subprocess.run([*base, f"serve.pid_file={stale}"],
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 3 and "stale pid file" in result.stderr


def test_pid_file_and_configured_pipe(daemon: Daemon) -> None:
    """Without -p: the pid from serve.pid_file, the answer over serve.pipe (here the same
    daemon, whose --debug pipe is the workdir's avtool_sig.pipe)."""
    pid_file = daemon.workdir / "avtool.pid"
    pid_file.write_text(f"{daemon.proc.pid}\n")
    cmd = [sys.executable, "-m", "avtool", "sig", "-f", str(daemon.workdir / "avtool.conf")]
    cmd += ["--set", f"serve.pid_file={pid_file}"]
    cmd += ["--set", f"serve.pipe={daemon.workdir}/avtool_sig.pipe", "status"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    assert f"pid {daemon.proc.pid}" in result.stdout


def test_sudoers_snippet_is_valid() -> None:
    if shutil.which("visudo") is None:
        pytest.skip("sudo not installed")
    path = REPO / "share" / "sudoers.avtool-sig"
    checked = subprocess.run(["visudo", "-cf", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = path.read_text()
    rule = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rule == ["clamav ALL = (courier) NOPASSWD: /usr/local/bin/avtool sig -l reload virus"]
    assert "OnUpdateExecute sudo -n -u courier /usr/local/bin/avtool sig -l reload virus" in text
    assert "/etc/sudoers.d/" in text and "0440" in text


def test_reload_storm_under_load(daemon: Daemon) -> None:
    """500 messages through the socket from 4 threads while `sig reload` runs every 100 ms
    (config mostly, the virus database every 5th): every verdict right, no reload failed."""
    jobs = [(i % 10 == 0, daemon.spool.message(mail(attachment=EICAR if i % 10 == 0 else None)))
            for i in range(500)]  # fmt: skip
    stop = threading.Event()
    reloads: list[tuple[int, str]] = []

    def storm() -> None:
        while not stop.is_set():
            what = ("virus",) if len(reloads) % 5 == 4 else ("config",)
            result = sig(daemon, "reload", *what)
            reloads.append((result.returncode, result.stderr))
            stop.wait(0.1)

    thread = threading.Thread(target=storm)
    thread.start()
    replies: list[str] = []
    try:
        until = time.monotonic() + 40
        with ThreadPoolExecutor(4) as pool:  # again until the storm has had its reloads
            while not replies or (len(reloads) < 10 and time.monotonic() < until):
                replies += pool.map(lambda j: daemon.filter(*j[1]), jobs)
    finally:
        stop.set()
        thread.join(60)
    rounds = len(replies) // len(jobs)
    for (infected, _), reply in zip(jobs * rounds, replies, strict=True):
        assert reply.startswith("550 " if infected else "200 "), reply
    assert len(reloads) >= 10 and all(rc == 0 for rc, _ in reloads), reloads


def test_dash_l_sends_the_answer_to_syslog_mail(daemon: Daemon, tmp_path: Path) -> None:
    """A datagram socket stands in for syslogd's /dev/log: bound there when there is none, else
    bind-mounted over it in a private mount namespace for the sig process alone."""
    dev_log = Path("/dev/log")
    prefix: tuple[str, ...] = ()
    sink_path = dev_log
    if dev_log.exists():
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("/dev/log is taken and no mount namespace can hide it")
        sink_path = tmp_path / "log"
        mount = f'mount --bind {sink_path} /dev/log && exec "$@"'
        prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh")
    conf = daemon.workdir / "avtool.conf"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(sink_path))
        sink.settimeout(5)
        try:
            conf.write_text(conf.read_text() + "\n[log]\nverbosity = 2\n")
            ok = sig(daemon, "-l", "reload", "config", prefix=prefix)
            ok_records = [sink.recv(4096).decode() for _ in range(2)]
            conf.write_text(conf.read_text() + '\n[policy]\ninfected = "bogus"\n')
            failed = sig(daemon, "-l", "reload", "config", prefix=prefix)
            failed_records = [sink.recv(4096).decode() for _ in range(2)]
        finally:
            sink_path.unlink()
    assert ok.returncode == 0 and ok.stdout == "", ok.stderr
    # <22>: facility mail (2) * 8 + severity info (6); ident and pid as syslog(3) writes them
    assert all(r.startswith("<22>") and "avtool-sig[" in r for r in ok_records), ok_records
    assert "config: reloaded from" in ok_records[0] and "1 change(s)" in ok_records[0]
    assert "config: log.verbosity: 1 -> 2" in ok_records[1]
    # the daemon's error answer: severity err (3), exit 1, still nothing on stdout
    assert failed.returncode == 1 and failed.stdout == ""
    assert all(r.startswith("<19>") for r in failed_records), failed_records
    assert "NOT reloaded" in failed_records[0] and "policy.infected" in failed_records[1]


def test_stats_show_a_backend_set_aside(clamd_server: Any, tmp_path: Path) -> None:
    """Two backends, the first one dead: after a message, stats show it set aside with its
    error, and the live one with the scan."""
    dead = str(tmp_path / "no-clamd.sock")
    conf = (
        config_for(str(clamd_server.unix_socket))
        .replace(
            f'backends = ["{clamd_server.unix_socket}"]',
            f'backends = ["{dead}", "{clamd_server.unix_socket}"]\nretry_after = 600.0',
        )
        .replace("retry_after = 1.0\n", "")
    )
    d = start_daemon(conf)
    try:
        data, ctls = d.spool.message(mail())
        assert d.filter(data, ctls) == "200 Ok\n"
        result = sig(d, "stats", "--json")
        assert result.returncode == 0, result.stderr
        first, second = json.loads(result.stdout)["clamd"]
        assert (first["address"], first["aside"], first["errors"]) == (dead, True, 1)
        assert (second["aside"], second["scans"], second["in_flight"]) == (False, 1, 0)
        prom = sig(d, "stats", "--prometheus").stdout
        assert f'avtool_clamd_set_aside{{backend="{dead}"}} 1' in prom
    finally:
        assert d.stop() == 0


def test_reloaded_verbosity_applies_and_max_connections_waits_for_a_restart(
    clamd_server: Any,
) -> None:
    """Not --debug (which logs everything): log.verbosity 1 -> 0 by SIGUSR1 ends the line per
    message; serve.max_connections (it sizes the workers, started once) is reported as taking
    effect at the next restart."""
    state = Path(tempfile.mkdtemp(prefix="avv", dir="/tmp"))
    extra = f'pid_file = "{state}/avtool.pid"\npipe = "{state}/sig.pipe"\n'
    d = start_daemon(config_for(str(clamd_server.unix_socket), extra), extra_args=[])
    try:
        assert d.filter(*d.spool.message(mail(subject="one"))) == "200 Ok\n"
        assert d.log().count("verdict=clean") == 1
        conf = d.workdir / "avtool.conf"
        text = conf.read_text().replace("[serve]\n", "[serve]\nmax_connections = 40\n")
        conf.write_text(text + "\n[log]\nverbosity = 0\n")
        os.kill(d.proc.pid, signal.SIGUSR1)  # no pipe: the answer goes to stderr
        deadline = time.monotonic() + 10
        while "END ok" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "config: serve.max_connections takes effect at the next restart" in d.log()
        assert d.filter(*d.spool.message(mail(subject="two"))) == "200 Ok\n"
        assert d.log().count("verdict=clean") == 1  # verbosity 0: errors only
    finally:
        assert d.stop() == 0
        shutil.rmtree(state, ignore_errors=True)


# ---- root never signals a process that is not the avtool daemon ---------------------------------
# The pid file is written by the daemon's user (courier): it can name any pid in it. Each decoy
# records the signals it gets (and who sent them, si_uid) instead of dying of them.
RECORDER = (
    "import signal, sys\n"
    "sigs = {signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGURG}\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, sigs)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    info = signal.sigwaitinfo(sigs)\n"
    "    print(info.si_signo, info.si_uid, flush=True)\n"
)


def _courier() -> Any:
    import pwd

    if os.geteuid() != 0:
        pytest.skip("the attack is on root's avtool sig")
    try:
        return pwd.getpwnam("courier")
    except KeyError:
        pytest.skip("no user courier")


def _signals(proc: subprocess.Popen[bytes], wait: float = 1.0) -> list[str]:
    """What the recorder printed within ``wait`` seconds (it only prints what it got)."""
    import select

    assert proc.stdout is not None
    got: list[str] = []
    fd = proc.stdout.fileno()
    until = time.monotonic() + wait
    while (left := until - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        got += chunk.decode().split()
    return got


@pytest.fixture
def courier_pid_file() -> Any:
    """A pid file as the daemon's user writes it: courier's file in courier's directory, and
    the answers pipe in a directory of root's (sig creates it there)."""
    user = _courier()
    top = Path(tempfile.mkdtemp(prefix="avp", dir="/tmp"))
    top.chmod(0o755)
    run_dir = top / "run"
    run_dir.mkdir()
    os.chown(run_dir, user.pw_uid, user.pw_gid)
    pid_file = run_dir / "avtool.pid"

    def name(pid: int) -> list[str]:
        pid_file.write_text(f"{pid}\n")
        os.chown(pid_file, user.pw_uid, user.pw_gid)
        return ["--set", f"serve.pid_file={pid_file}", "--set", f"serve.pipe={top}/avtool.pipe"]

    yield name
    shutil.rmtree(top, ignore_errors=True)


def _root_sig(*args: str, cwd: Path = Path("/")) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "avtool", "sig", "-f", "/dev/null", "-t", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize(
    "action", [("reload",), ("reload", "config"), ("reload", "virus"), ("stats",)]
)
def test_root_refuses_a_pid_file_naming_another_program(
    courier_pid_file: Any, action: tuple[str, ...]
) -> None:
    """courier names a root process (sshd, here a recorder run as root) in its pid file: root's
    sig refuses, exit 3 as for "not running", and the process gets no signal."""
    decoy = subprocess.Popen([sys.executable, "-c", RECORDER], stdout=subprocess.PIPE)
    try:
        assert decoy.stdout is not None and decoy.stdout.readline() == b"ready\n"
        result = _root_sig(*action, *courier_pid_file(decoy.pid))
        assert result.returncode == 3, result.stderr
        assert f"process {decoy.pid} is not avtool serve" in result.stderr
        assert "refusing to signal it" in result.stderr and "Traceback" not in result.stderr
        assert _signals(decoy) == [] and decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()


def test_root_refuses_a_lookalike_that_runs_as_another_user(courier_pid_file: Any) -> None:
    """A process that looks like avtool serve but is root's, named in courier's pid file (the
    command line alone proves nothing: anyone can start a script called avtool)."""
    decoy = _lookalike(RECORDER)
    try:
        result = _root_sig("reload", *courier_pid_file(decoy.pid))
        assert result.returncode == 3, result.stderr
        assert "runs as uid 0, not as uid" in result.stderr and "pid file's owner" in result.stderr
        assert _signals(decoy) == [] and decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()


def test_root_refuses_dash_p_naming_another_program(tmp_path: Path) -> None:
    """-p PID given by root gets the same check (against the process's own uid)."""
    _courier()
    decoy = subprocess.Popen(["sleep", "60"])  # root's; SIGHUP would end it
    try:
        result = _root_sig("reload", "-p", str(decoy.pid), cwd=tmp_path)  # the pipe: ./
        assert result.returncode == 3 and "is not avtool serve (sleep 60)" in result.stderr
        time.sleep(0.3)
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()


def test_root_signals_the_daemon_as_the_pid_file_owner(courier_pid_file: Any) -> None:
    """The daemon's user's own process passes, and the signal comes from that user, not root:
    even a wrong check could only reach what courier can signal anyway."""
    user = _courier()
    daemonish = _lookalike(RECORDER, user=user.pw_uid, group=user.pw_gid)
    try:
        result = _root_sig("reload", *courier_pid_file(daemonish.pid))
        assert result.returncode == 5, result.stderr  # asked, and it never answers
        assert _signals(daemonish) == ["1", str(user.pw_uid)]  # SIGHUP, sent as courier
    finally:
        daemonish.kill()
        daemonish.wait()
