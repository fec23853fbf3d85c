"""The security review, one test (or table) per point, on a real daemon and a real clamd.

- pid file and answers pipe: never through a symlink (the pid file's symlink case is in
  tests/unit/test_pidfile.py), never in a dir that others can write;
- the daemon opens nothing outside the spool (inotify on a dir outside it; /proc/PID/fd);
- quarantine: dirs 0700, files 0600, whatever the umask;
- logs: sender, recipients, verdict and virus names, never the body;
- run-get-ides runs its one script and nothing else.

The filter socket's owner (courier) and mode (0660) under the real Courier are checked in
tests/e2e/test_avtool.py; the mode alone in tests/integration/test_serve.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import os
import pwd
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from avtool import updates
from avtool.cli.app import app, main
from avtool.control.client import Target, request
from avtool.control.fifo import open_fifo_for_writing
from avtool.control.pidfile import PidFile
from avtool.control.wire import SigError
from avtool.courier.protocol import ProtocolError
from avtool.errors import DaemonError
from tests.e2e.harness import wait_for
from tests.support.serve import (
    EICAR,
    Daemon,
    config_for,
    control_text,
    mail,
    request_bytes,
    start_daemon,
)

pytestmark = pytest.mark.clamd


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A dir below /tmp (short paths, and not pytest's tmp_path so modes are ours to set)."""
    path = Path(tempfile.mkdtemp(prefix="avsec", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


# ---- pid file and answers pipe ---------------------------------------------------------------
def shared_dir(base: Path, kind: str) -> Path:
    """A dir that others can write (or not), by ``kind``."""
    path = base / kind
    path.mkdir()
    mode = {"world": 0o777, "sticky": 0o1777, "group": 0o775, "private": 0o755, "other": 0o755}
    os.chmod(path, mode[kind])
    if kind == "other":
        os.chown(path, nobody(), -1)
    return path


UNSAFE = ["world", "sticky", "other"]
SAFE = ["group", "private"]  # group-writable is the admin's choice: /run/courier is 0775


@pytest.mark.parametrize("kind", UNSAFE)
def test_pid_file_refused_in_a_dir_others_can_write(private_dir: Path, kind: str) -> None:
    if kind == "other" and os.geteuid() != 0:
        pytest.skip("chown needs root")
    where = shared_dir(private_dir, kind) / "avtool.pid"
    with pytest.raises(DaemonError, match="refusing to write the pid file"):
        PidFile(where).create()
    assert not where.exists()


@pytest.mark.parametrize("kind", SAFE)
def test_pid_file_written_in_a_dir_only_we_write(private_dir: Path, kind: str) -> None:
    where = shared_dir(private_dir, kind) / "avtool.pid"
    pid = PidFile(where)
    pid.create()
    assert where.read_text() == f"{os.getpid()}\n"
    pid.remove()
    assert not where.exists()


def courier_state(base: Path) -> Path:
    state = base / "state"
    for sub in ("filters", "allfilters"):
        (state / sub).mkdir(parents=True)
    return state


def test_the_daemon_refuses_to_start_with_its_pid_file_in_tmp(
    clamd_server: Any, private_dir: Path
) -> None:
    """As courierfilter starts it: a clear error, non-zero exit, no socket installed."""
    state = courier_state(private_dir)
    pid_file = shared_dir(private_dir, "sticky") / "avtool.pid"
    extra = f'courier_dir = "{state}"\npid_file = "{pid_file}"\n'
    d = start_daemon(
        config_for(str(clamd_server.unix_socket), extra),
        extra_args=[],
        socket_path=state / "allfilters" / "avtool",
    )
    assert d.proc.wait(20) != 0
    assert "refusing to write the pid file" in d.log() and "writable by every user" in d.log()
    assert "Traceback" not in d.log()
    assert not pid_file.exists() and not (state / "allfilters" / "avtool").exists()


def fifo_with_reader(path: Path) -> int:
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def read_for(fd: int, seconds: float) -> bytes:
    got = b""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(fd, 4096)
            got += chunk
            if b"END " in got:
                break
        time.sleep(0.05)
    return got


@pytest.fixture
def daemon(clamd_server: Any) -> Iterator[Daemon]:
    d = start_daemon(config_for(str(clamd_server.unix_socket)))
    yield d
    if d.proc.poll() is None:
        assert d.stop() == 0


def reloads(d: Daemon) -> int:
    return d.log().count("config: reloaded from")


@pytest.mark.parametrize("where", ["private", "world-writable", "symlink"])
def test_the_daemon_answers_only_into_a_safe_fifo(daemon: Daemon, where: str) -> None:
    """serve --debug answers SIGUSR1 into ./avtool_sig.pipe: a fifo of its own dir, never one
    reached through a symlink or one in a dir that others can write (then: stderr)."""
    pipe = daemon.workdir / "avtool_sig.pipe"
    elsewhere = Path(tempfile.mkdtemp(prefix="avsec", dir="/tmp"))
    try:
        if where == "symlink":
            fd = fifo_with_reader(elsewhere / "fifo")
            pipe.symlink_to(elsewhere / "fifo")
        else:
            fd = fifo_with_reader(pipe)
        if where == "world-writable":
            os.chmod(daemon.workdir, 0o777)  # noqa: S103 - the point
        before = reloads(daemon)
        daemon.proc.send_signal(signal.SIGUSR1)
        got = read_for(fd, 3.0 if where == "private" else 1.5)
        os.close(fd)
        if where == "private":
            assert got.startswith(b"config: reloaded from") and got.endswith(b"END ok\n"), got
        else:
            assert got == b""
            assert wait_for(lambda: reloads(daemon) > before, 10)  # answered on stderr
    finally:
        os.chmod(daemon.workdir, 0o700)
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_open_fifo_for_writing_refuses_what_is_not_a_safe_fifo(private_dir: Path) -> None:
    regular = private_dir / "regular"
    regular.write_text("")
    assert open_fifo_for_writing(regular) is None and regular.read_text() == ""
    unsafe = shared_dir(private_dir, "world") / "fifo"
    fd = fifo_with_reader(unsafe)
    try:
        assert open_fifo_for_writing(unsafe) is None
        os.chmod(unsafe.parent, 0o755)  # noqa: S103 - not writable by others
        writer = open_fifo_for_writing(unsafe)  # the same fifo, in a safe dir: used
        assert writer is not None
        writer.close()
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", UNSAFE)
def test_sig_refuses_to_create_its_pipe_in_a_dir_others_can_write(
    private_dir: Path, kind: str
) -> None:
    if kind == "other" and os.geteuid() != 0:
        pytest.skip("chown needs root")
    pipe = shared_dir(private_dir, kind) / "avtool_sig.pipe"
    with pytest.raises(SigError, match="refusing to create the answers pipe") as caught:
        request(Target(os.getpid(), pipe), signal.SIGURG, 1.0, [])
    assert caught.value.exit_code == 2
    assert list(pipe.parent.iterdir()) == []  # no fifo, no temp name left


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a process as nobody")
def test_sig_accepts_a_pipe_dir_owned_by_the_daemon_s_user(private_dir: Path) -> None:
    """root asking a daemon that runs as another user (courier): a dir of that user is fine,
    the same dir is refused for a process of yet another user (ours: root's own sleep)."""
    pipe = shared_dir(private_dir, "other") / "avtool.pipe"  # nobody's, 0755
    as_nobody = subprocess.Popen(["sleep", "30"], user="nobody")
    as_root = subprocess.Popen(["sleep", "30"])
    try:
        answer = request(Target(as_nobody.pid, pipe), signal.SIGURG, 0.3, [])
        assert answer.end == "timeout"  # asked: sleep ignores SIGURG and never answers
        assert list(pipe.parent.iterdir()) == []
        with pytest.raises(SigError, match="belongs to another user"):
            request(Target(as_root.pid, pipe), signal.SIGURG, 0.3, [])
    finally:
        for proc in (as_nobody, as_root):
            proc.kill()
            proc.wait()


def test_sig_p_from_a_world_writable_cwd_is_refused(daemon: Daemon, private_dir: Path) -> None:
    cwd = shared_dir(private_dir, "sticky")
    result = subprocess.run(
        [sys.executable, "-m", "avtool", "sig", "-p", str(daemon.proc.pid), "reload", "config"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to create the answers pipe" in result.stderr
    assert list(cwd.iterdir()) == []


# ---- nothing opened outside the spool -------------------------------------------------------
_IN_OPEN, _IN_ACCESS = 0x20, 0x01


class OpenWatch:
    """inotify on one dir: every open of it or of a file in it (lstat is no open)."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if (
            self.fd < 0
            or libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_OPEN | _IN_ACCESS) < 0
        ):
            raise OSError(ctypes.get_errno(), "inotify")

    def events(self) -> list[str]:
        names: list[str] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            i = 0
            while i < len(buf):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", buf, i)
                names.append(buf[i + 16 : i + 16 + length].rstrip(b"\0").decode() or ".")
                i += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def test_the_daemon_opens_nothing_outside_the_spool(daemon: Daemon, private_dir: Path) -> None:
    outside = private_dir / "outside"
    outside.mkdir()
    (outside / "D1").write_bytes(mail(attachment=EICAR))
    (outside / "C1").write_text(control_text(["victim@example.test"]))
    spool = daemon.spool.root
    data, ctls = daemon.spool.message(mail(attachment=EICAR))
    (spool / "link-D").symlink_to(outside / "D1")
    (spool / "link-C").symlink_to(outside / "C1")
    (spool / "link-dir").symlink_to(outside)
    requests = {
        "data outside": request_bytes(outside / "D1", ctls),
        "control outside": request_bytes(data, [outside / "C1"]),
        "/etc/shadow as control": request_bytes(data, [Path("/etc/shadow")]),
        "symlinked data": request_bytes(spool / "link-D", ctls),
        "symlinked control": request_bytes(data, [spool / "link-C"]),
        "symlinked dir": request_bytes(spool / "link-dir" / "D1", [spool / "link-dir" / "C1"]),
        "dotdot": request_bytes(Path(f"{spool}/../outside/D1"), ctls),
    }
    watch = OpenWatch(outside)
    try:
        for name, raw in requests.items():
            reply = daemon.ask(raw)
            assert reply[:1] in "45" and reply[3:4] == " ", (name, reply)
            assert watch.events() == [], name
        assert daemon.filter(data, ctls).startswith("550 ")  # the real one is still scanned
        (outside / "D1").read_bytes()  # the watch does see an open: this test can fail
        assert "D1" in watch.events()
    finally:
        watch.close()
    assert (outside / "C1").read_text() == control_text(["victim@example.test"])


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def files_open(d: Daemon) -> list[str]:
    """Regular files the daemon holds open, other than its own stderr log."""
    return [
        t
        for t in fd_targets(d.proc.pid)
        if t.startswith("/") and t not in (str(d.stderr_path), "/dev/null")
    ]


def test_during_a_scan_only_the_data_file_and_its_dir_are_open_and_after_it_nothing() -> None:
    from tests.fakes.clamd import FakeClamd

    work = Path(tempfile.mkdtemp(prefix="avf", dir="/tmp"))
    try:
        with FakeClamd(work / "fake.sock", "hang") as fake:
            conf = config_for(fake.address).replace("scan_timeout = 10.0", "scan_timeout = 2.0")
            d = start_daemon(conf)
            assert files_open(d) == []
            data, ctls = d.spool.message(mail())
            result: list[str] = []
            asker = threading.Thread(target=lambda: result.append(d.filter(data, ctls)))
            asker.start()
            assert wait_for(lambda: files_open(d) != [], 5)
            # control files read and closed already; the data file and its directory are kept
            # open until the message is complete (the header rewrite works in the directory)
            assert sorted(files_open(d)) == sorted([str(data), str(data.parent)])
            asker.join(10)
            assert result and result[0].startswith("432 ")
            assert files_open(d) == []  # nothing leaked
            assert d.stop() == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_quarantine_copies_refuse_a_symlink_swapped_in(private_dir: Path) -> None:
    """After the checks, the copy into the quarantine opens the spool file again: no follow."""
    from avtool.daemon.pipeline import _copy_private

    secret = private_dir / "secret"
    secret.write_text("not for the quarantine\n")
    link = private_dir / "D1"
    link.symlink_to(secret)
    with pytest.raises(ProtocolError, match="symlink"):
        _copy_private(str(link), private_dir / "copy")
    assert not (private_dir / "copy").exists() or (private_dir / "copy").read_text() == ""


# ---- quarantine modes -----------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277], ids=lambda u: f"umask-{u:03o}")
def test_quarantine_is_private_whatever_the_umask(clamd_server: Any, umask: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="avq", dir="/tmp"))
    qdir = base / "made" / "by" / "avtool"  # missing parents are created too
    extra = f'\n[policy]\ninfected = "quarantine"\nquarantine_dir = "{qdir}"\n'
    old = os.umask(umask)
    try:
        d = start_daemon(config_for(str(clamd_server.unix_socket), extra))
    finally:
        os.umask(old)
    try:
        data, ctls = d.spool.message(mail(attachment=EICAR))
        assert d.filter(data, ctls).startswith("200 ")
        for directory in (base / "made", base / "made" / "by", qdir):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        (entry,) = qdir.iterdir()
        assert stat.S_IMODE(entry.stat().st_mode) == 0o700
        files = sorted(f.name for f in entry.iterdir())
        assert files == ["control.0", "data", "verdict.json"]
        for f in entry.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert (entry / "data").read_bytes() == data.read_bytes()
        assert d.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---- logs ------------------------------------------------------------------------------------
MARKER = "BODY-MARKER-4f1c9e"


@pytest.mark.parametrize("policy", ["reject", "pass", "quarantine", "drop"])
def test_logs_carry_the_envelope_and_verdict_never_the_body(
    clamd_server: Any, private_dir: Path, policy: str
) -> None:
    extra = (
        f'\n[policy]\ninfected = "{policy}"\nquarantine_dir = "{private_dir}/q"\n'
        "\n[headers]\nclean = true\n\n[log]\nverbosity = 3\n"
    )
    d = start_daemon(config_for(str(clamd_server.unix_socket), extra))
    try:
        rcpts = ["first@example.test", "second@example.test"]
        body = f"{MARKER}\n".encode() * 3
        infected = d.spool.message(mail(body=body, attachment=EICAR), rcpts)
        clean = d.spool.message(mail(body=body), rcpts)
        assert d.filter(*infected)[:1] in "25"
        assert d.filter(*clean) == "200 Ok\n"
        assert d.stop() == 0
        log = d.log()
        lines = [x for x in log.splitlines() if "verdict=" in x]
        assert len(lines) == 2, log
        for line in lines:
            assert "from=<sender@example.com>" in line
            assert "rcpts=2 to=<first@example.test>,<second@example.test>" in line
        assert "verdict=infected: Eicar-Test-Signature" in lines[0]
        assert f"action={policy}" in lines[0]
        assert "verdict=clean" in lines[1]
        assert MARKER not in log
        assert base64_of(MARKER) not in log
    finally:
        if d.proc.poll() is None:
            d.proc.kill()


def base64_of(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()[:12]


def test_log_lines_cannot_be_forged_by_addresses_and_stay_bounded(daemon: Daemon) -> None:
    many = [f"r{i}@example.test" for i in range(25)]
    data, ctls = daemon.spool.message(mail(), many)
    text = ctls[0].read_text().replace("ssender@example.com", "sa@x\rverdict=clean \x1b[2J")
    ctls[0].write_text(text)
    assert daemon.filter(data, ctls) == "200 Ok\n"
    line = next(x for x in daemon.log().splitlines() if "rcpts=25" in x)
    assert "from=<a@x?verdict=clean ?[2J>" in line
    assert "<r9@example.test>,+15 verdict=" in line and "r10@" not in line
    assert "\r" not in daemon.log() and "\x1b" not in daemon.log()


# ---- run-get-ides ---------------------------------------------------------------------------
runner = CliRunner()

RECORDER = """#!/bin/sh
# Records how it was run, for the test: argv, environment, stdin digest.
{{
  for a in "$@"; do printf 'ARG<%s>\\n' "$a"; done
  env | sort | sed 's/^/ENV /'
  printf 'STDIN %s\\n' "$(sha256sum | cut -d' ' -f1)"
}} > {record}
echo "subject: OK"
"""

EVIL = "#!/bin/sh\ntouch {marker}\nexit 0\n"


@pytest.fixture
def get_ides(private_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The fixed script replaced by a recorder; a PATH dir full of impostors that leave a
    marker if any of them runs (sudo, sh, env, the script's own name, ...)."""
    os.chmod(private_dir, 0o755)  # noqa: S103 - traversable for sudo's target user
    record, marker = private_dir / "record", private_dir / "EVIL-RAN"
    script = private_dir / "get_ides.sh"
    script.write_text(RECORDER.format(record=record))
    script.chmod(0o755)
    monkeypatch.setattr(updates, "SCRIPT", script)
    monkeypatch.setattr(updates, "STATE_DIR", private_dir / "state")  # no stamp: no early skip
    monkeypatch.delenv("FROM", raising=False)
    evil = private_dir / "evil-bin"
    evil.mkdir()
    for name in ("sudo", "sh", "bash", "env", "get_ides.sh", "freshclam", "avtool", "cat"):
        (evil / name).write_text(EVIL.format(marker=marker))
        (evil / name).chmod(0o755)
    (evil / "rc").write_text(EVIL.format(marker=marker))
    monkeypatch.setenv("PATH", f"{evil}:{os.environ['PATH']}")
    monkeypatch.setenv("IFS", "/")
    monkeypatch.setenv("BASH_ENV", str(evil / "rc"))
    monkeypatch.setenv("ENV", str(evil / "rc"))
    monkeypatch.setenv("SUDO_COMMAND", str(evil / "sh"))
    monkeypatch.setenv("SUDO_USER", "root")
    monkeypatch.setenv("SUDO_ASKPASS", str(evil / "sh"))
    monkeypatch.setenv("SHELL", str(evil / "sh"))
    return {"record": record, "marker": marker, "evil": evil}


HOSTILE_ARGS = [
    "; touch {marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    "| touch {marker}",
    "--",
    "-u",
    "root",
    "{evil}/sh",
    "-c",
    "touch {marker}",
]
HOSTILE_MESSAGE = (
    b"From: announce@example.org\nSubject: $(touch MARK); `touch MARK` | sh -c 'touch MARK'\n"
    b"Content-Type: text/plain\n\n#!/bin/sh\ntouch MARK\n$(touch MARK)\n"
)


def recorded(path: Path) -> tuple[list[str], dict[str, str], str]:
    args, env, digest = [], {}, ""
    for line in path.read_text().splitlines():
        if line.startswith("ARG<"):
            args.append(line[4:-1])
        elif line.startswith("ENV "):
            key, _, value = line[4:].partition("=")
            env[key] = value
        elif line.startswith("STDIN "):
            digest = line[6:]
    return args, env, digest


def test_run_get_ides_runs_its_script_only_with_hostile_argv_env_and_message(
    get_ides: dict[str, Path],
) -> None:
    args = [a.format(marker=get_ides["marker"], evil=get_ides["evil"]) for a in HOSTILE_ARGS]
    message = HOSTILE_MESSAGE.replace(b"MARK", os.fsencode(get_ides["marker"]))
    result = runner.invoke(app, ["run-get-ides", "--", *args], input=message)
    assert result.exit_code == 0, result.output
    assert not get_ides["marker"].exists()
    got_args, env, digest = recorded(get_ides["record"])
    assert got_args == args  # each one literal, none read as an option or by a shell
    assert digest == hashlib.sha256(message).hexdigest()  # the message, untouched, on stdin
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    for name in ("IFS", "BASH_ENV", "ENV", "SUDO_COMMAND", "SUDO_USER", "SUDO_ASKPASS", "SHELL"):
        assert name not in env, name
    out = result.stdout_bytes
    assert b"Subject: [OK] $(touch" in out  # the subject is text, tagged, not run


@pytest.mark.parametrize(
    "value",
    [
        "0/0; touch {marker}",
        "$(touch {marker})/0",
        "root -- {evil}/sh/0",
        "0/0/0",
        "-1/-1",
        "0",
        "/",
        "#0/#0",
        "root/root -c touch {marker}",
    ],
)
def test_run_get_ides_d_values_cannot_smuggle_anything(
    get_ides: dict[str, Path],
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    value = value.format(marker=get_ides["marker"], evil=get_ides["evil"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Subject: x\n\nbody\n")))
    with pytest.raises(SystemExit) as caught:
        main(["run-get-ides", "-D", value])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("avtool: -D ") and "Traceback" not in err
    assert not get_ides["record"].exists()  # the script did not run
    assert not get_ides["marker"].exists()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/sudo").exists(), reason="sudo as root")
def test_run_get_ides_d_uses_the_real_sudo_not_one_on_path(get_ides: dict[str, Path]) -> None:
    """-D 0/0 goes through sudo -n: found on the fixed PATH, not the caller's."""
    result = runner.invoke(app, ["run-get-ides", "-D", "root/root", "new"], input=b"Subject: x\n\n")
    assert result.exit_code == 0, result.output
    assert not get_ides["marker"].exists()
    got_args, env, _ = recorded(get_ides["record"])
    assert got_args == ["new"]
    assert env.get("SUDO_COMMAND", "").startswith(str(updates.SCRIPT))  # the real sudo ran it
    assert "IFS" not in env and "BASH_ENV" not in env


def test_run_get_ides_has_no_way_to_name_another_script(get_ides: dict[str, Path]) -> None:
    """No option, config key or environment variable chooses the program."""
    command = typer.main.get_command(app).commands["run-get-ides"]  # type: ignore[attr-defined]
    options = {opt for p in command.params for opt in p.opts if opt.startswith("-")}
    assert options == {"-D", "-t", "--timeout"}  # and ARGS, which go to the script (above)
    for var in ("AVTOOL_RUN_GET_IDES_SCRIPT", "AVTOOL_UPDATES_SCRIPT", "AVTOOL_SCRIPT"):
        os.environ[var] = str(get_ides["evil"] / "sh")
    try:
        result = runner.invoke(app, ["run-get-ides"], input=b"Subject: x\n\n")
    finally:
        for var in ("AVTOOL_RUN_GET_IDES_SCRIPT", "AVTOOL_UPDATES_SCRIPT", "AVTOOL_SCRIPT"):
            del os.environ[var]
    assert result.exit_code == 0
    assert get_ides["record"].exists() and not get_ides["marker"].exists()


def test_run_get_ides_skips_a_sender_outside_updates_senders(
    get_ides: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forged announcement from a sender the allowlist does not name: kept, tagged, exit 0
    (no maildrop retry), and the script never runs."""
    conf = tmp_path / "avtool.conf"
    conf.write_text('[updates]\nsenders = ["*@lists.clamav.net"]\n')
    monkeypatch.setenv("AVTOOL_CONFIG", str(conf))
    monkeypatch.setenv("FROM", "forger@example.com")
    result = runner.invoke(app, ["run-get-ides"], input=b"Subject: daily\n\nbody\n")
    assert result.exit_code == 0, result.output
    assert not get_ides["record"].exists()
    out = result.stdout_bytes
    assert b"Subject: [SKIPPED sender] daily" in out
    assert b"skipped: the envelope sender forger@example.com is not in updates.senders" in out
    monkeypatch.setenv("FROM", "announce@lists.clamav.net")
    result = runner.invoke(app, ["run-get-ides"], input=b"Subject: daily\n\nbody\n")
    assert result.exit_code == 0 and get_ides["record"].exists()


def test_run_get_ides_a_config_error_is_kept_not_deferred(
    get_ides: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "avtool.conf"
    conf.write_text("[updates]\nmin_interval = -1\n")
    monkeypatch.setenv("AVTOOL_CONFIG", str(conf))
    result = runner.invoke(app, ["run-get-ides"], input=b"Subject: daily\n\nbody\n")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert b"Subject: [FAILED: config] daily" in result.stdout_bytes
    assert b"updates.min_interval: must be >= 0" in result.stdout_bytes
    assert not get_ides["record"].exists()
