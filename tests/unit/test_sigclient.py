"""avtool sig's client side without a daemon: the pipe's lifecycle, locking and stale pipes, the
answer protocol (the daemon side is played by fifo.Answer, the class the daemon uses); and the
command line: where its options may go, its usage errors and --help. The messages themselves
(signals, counters, Prometheus) are tests/unit/test_wire.py's."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from avtool.cli import sig as sig_cli
from avtool.cli.app import app
from avtool.config import Config
from avtool.control.client import Target, request, target
from avtool.control.fifo import Answer, Fds, open_fifo_for_writing, read_answer, remove_if_ours
from avtool.control.pidfile import is_avtool_serve
from avtool.control.wire import END_ERROR, END_OK, Busy, NotRunning, Response, SigError

# The fake daemon is this process: a handler for SIGUSR1 sets a flag (as serve's does), and a
# thread answers over the pipe with the daemon's own fifo.Answer.
SIGNAL = signal.SIGUSR1


class FakeDaemon:
    def __init__(self, pipe: Path) -> None:
        self.pipe = pipe
        self.asked = threading.Event()
        self.seen: list[os.stat_result] = []
        self.script: Callable[[Path], None] = lambda pipe: None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.asked.set()

    def run(self) -> None:
        if not self.asked.wait(10):
            return
        self.seen.append(os.lstat(self.pipe))
        self.script(self.pipe)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(tmp_path / "avtool.pipe")
    old = signal.signal(SIGNAL, fake.handler)
    thread = threading.Thread(target=fake.run, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.asked.set()
        thread.join(10)
        signal.signal(SIGNAL, old)


def answers(*lines: str, ok: bool = True) -> Callable[[Path], None]:
    def script(pipe: Path) -> None:
        answer = Answer(pipe)
        assert answer.to_pipe
        for line in lines:
            answer.line(line)
        answer.finish(ok)

    return script


def ask(pipe: Path, timeout: float = 5.0, warn: list[str] | None = None) -> Response:
    return request(Target(os.getpid(), pipe), SIGNAL, timeout, [] if warn is None else warn)


def test_answer_ok_then_the_pipe_is_gone(daemon: FakeDaemon, tmp_path: Path) -> None:
    daemon.script = answers("config: reloaded from x, 0 change(s)", "virus: ok")
    answer = ask(daemon.pipe)
    assert answer.end == "ok" and answer.exit_code == 0
    assert answer.lines == ("config: reloaded from x, 0 change(s)", "virus: ok")
    assert list(tmp_path.iterdir()) == []  # no pipe, no temp name left


def test_the_pipe_is_a_fifo_only_its_owner_uses(daemon: FakeDaemon) -> None:
    daemon.script = answers()
    old = os.umask(0o077)  # the group bits are set explicitly, not left to the umask
    try:
        ask(daemon.pipe)
    finally:
        os.umask(old)
    (seen,) = daemon.seen
    assert stat.S_ISFIFO(seen.st_mode) and stat.S_IMODE(seen.st_mode) == 0o600
    assert seen.st_uid == os.geteuid()  # the "daemon" is this process: same user


def test_error_answer_exit_1(daemon: FakeDaemon) -> None:
    daemon.script = answers("config: NOT reloaded, 1 error(s); the old one stays", ok=False)
    answer = ask(daemon.pipe)
    assert answer.end == "error" and answer.exit_code == 1
    assert answer.lines == ("config: NOT reloaded, 1 error(s); the old one stays",)


def test_eof_without_end_is_incomplete(daemon: FakeDaemon) -> None:
    def cut_short(pipe: Path) -> None:
        f = open_fifo_for_writing(pipe)
        assert f is not None
        f.write("virus: clamd /x: reloading\npartial")
        f.close()  # as a daemon that dies mid-answer

    daemon.script = cut_short
    answer = ask(daemon.pipe)
    assert answer.end == "eof" and answer.exit_code == 1
    assert answer.lines == ("virus: clamd /x: reloading", "partial")


def test_no_answer_times_out(daemon: FakeDaemon) -> None:
    started = time.monotonic()
    answer = ask(daemon.pipe, timeout=0.5)  # the fake is asked but never writes
    assert answer.end == "timeout" and answer.exit_code == 5
    assert 0.5 <= time.monotonic() - started < 2.0
    assert not daemon.pipe.exists()


def _default_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_a_daemon_that_dies_ends_the_wait_early(tmp_path: Path) -> None:
    # SIGHUP's default action ends it (set again: a runner under nohup(1) passes it ignored)
    sleeper = subprocess.Popen(["sleep", "30"], preexec_fn=_default_sighup)  # noqa: PLW1509
    try:
        started = time.monotonic()
        answer = request(Target(sleeper.pid, tmp_path / "p"), signal.SIGHUP, 20.0, [])
        sleeper.wait(5)
        assert answer.end == "gone" and answer.exit_code == 3
        assert time.monotonic() - started < 5  # not the 20 s timeout
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as courier")
def test_root_gives_the_pipe_to_the_daemons_user(tmp_path: Path) -> None:
    import pwd

    try:
        courier = pwd.getpwnam("courier")
    except KeyError:
        pytest.skip("no user courier")
    os.chmod(tmp_path, 0o755)  # noqa: S103 - the sleeper (courier) must reach the pipe
    sleeper = subprocess.Popen(["sleep", "30"], user=courier.pw_uid, group=courier.pw_gid)
    pipe, seen = tmp_path / "avtool.pipe", []

    def watch() -> None:
        for _ in range(200):
            if pipe.exists():
                seen.append(os.lstat(pipe))
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:  # SIGURG: ignored by sleep, so the request waits for its timeout
        answer = request(Target(sleeper.pid, pipe), signal.SIGURG, 0.5, [])
    finally:
        sleeper.kill()
        sleeper.wait()
        watcher.join()
    assert answer.end == "timeout"
    (st_,) = seen
    assert (st_.st_uid, st_.st_gid) == (courier.pw_uid, courier.pw_gid)
    assert stat.S_IMODE(st_.st_mode) == 0o600


def test_a_locked_pipe_is_busy_exit_4(daemon: FakeDaemon) -> None:
    os.mkfifo(daemon.pipe, 0o600)
    holder = os.open(daemon.pipe, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another request, alive
    try:
        with pytest.raises(Busy, match="in progress") as caught:
            ask(daemon.pipe)
        assert caught.value.exit_code == 4
        assert stat.S_ISFIFO(os.lstat(daemon.pipe).st_mode)  # its pipe is left alone
        assert not daemon.asked.is_set()  # and no signal was sent
    finally:
        os.close(holder)


def test_a_second_request_while_one_waits_is_busy(daemon: FakeDaemon) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])  # ignores SIGURG: the first request waits
    code = (
        "import signal, sys\nfrom pathlib import Path\nfrom avtool.control.client import Target, "
        "request\nrequest(Target(int(sys.argv[1]), Path(sys.argv[2])), signal.SIGURG, 5.0, [])"
    )
    first = subprocess.Popen([sys.executable, "-c", code, str(sleeper.pid), str(daemon.pipe)])
    try:
        deadline = time.monotonic() + 10
        while not daemon.pipe.exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
        with pytest.raises(Busy):
            ask(daemon.pipe)
        assert first.poll() is None and daemon.pipe.exists()  # the first one goes on
    finally:
        for proc in (first, sleeper):
            proc.kill()
            proc.wait()


def test_a_stale_pipe_is_removed_with_a_warning(daemon: FakeDaemon) -> None:
    os.mkfifo(daemon.pipe, 0o600)  # left by a client that was killed: nobody holds its lock
    stale_ino = os.lstat(daemon.pipe).st_ino
    daemon.script = answers("config: reloaded")
    warnings: list[str] = []
    answer = ask(daemon.pipe, warn=warnings)
    assert answer.end == "ok"
    assert len(warnings) == 1 and "removed a stale pipe" in warnings[0]
    assert daemon.seen[0].st_ino != stale_ino  # the answer came over a new pipe


def test_cleanup_leaves_a_pipe_that_took_our_name(tmp_path: Path) -> None:
    """The race guard: a client removes its pipe by name only while the name is still its inode."""
    pipe = tmp_path / "avtool.pipe"
    os.mkfifo(pipe)
    ours = os.lstat(pipe)
    pipe.rename(tmp_path / "old")  # kept alive, so the new fifo cannot reuse its inode number
    os.mkfifo(pipe)
    assert not remove_if_ours(pipe, ours) and pipe.exists()
    assert remove_if_ours(tmp_path / "old", ours) and not (tmp_path / "old").exists()


def test_a_symlink_in_place_of_the_pipe_is_not_followed(daemon: FakeDaemon, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    daemon.pipe.symlink_to(victim)
    with pytest.raises(Busy, match="symlink"):
        ask(daemon.pipe)
    assert victim.read_text() == "precious\n" and daemon.pipe.is_symlink()


def test_a_regular_file_in_place_of_the_pipe_is_refused(daemon: FakeDaemon) -> None:
    daemon.pipe.write_text("not a pipe\n")
    with pytest.raises(Busy, match="not a pipe"):
        ask(daemon.pipe)
    assert daemon.pipe.read_text() == "not a pipe\n"


def test_a_missing_pipe_dir_is_an_error_not_a_hang(tmp_path: Path) -> None:
    with pytest.raises(SigError, match="cannot create the answers pipe") as caught:
        request(Target(os.getpid(), tmp_path / "no" / "p"), SIGNAL, 5.0, [])
    assert caught.value.exit_code == 2


# ---- the answer stream, any chunking -----------------------------------------------------------
line_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\n\r"), max_size=40
).filter(lambda s: s not in (END_OK, END_ERROR))


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(line_text, max_size=8), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_lines_survive_any_chunking(lines: list[str], cuts: list[int]) -> None:
    wire = "".join(f"{line}\n" for line in lines).encode() + END_OK.encode() + b"\n"
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        edges = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
        for a, b in zip(edges, edges[1:], strict=False):
            os.write(w, wire[a:b])
        answer = read_answer(Fds(r, None), os.getpid(), 2.0)
    finally:
        os.close(r)
        os.close(w)
    assert answer.end == "ok" and list(answer.lines) == lines


# ---- who to signal -----------------------------------------------------------------------------
def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout)


def _cfg(tmp_path: Path) -> Config:
    overrides = {"serve.pid_file": str(tmp_path / "a.pid"), "serve.pipe": str(tmp_path / "a.p")}
    return Config.resolve(env={}, overrides=overrides, role="daemon", path=tmp_path / "none")


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    (tmp_path / "none").write_text("")
    return _cfg(tmp_path)


def test_target_from_the_pid_file(cfg: Config, tmp_path: Path) -> None:
    (tmp_path / "a.pid").write_text(f"{os.getpid()}\n")
    owner = os.geteuid() if os.geteuid() == 0 else None  # the file's owner: this user
    assert target(cfg, None) == Target(os.getpid(), tmp_path / "a.p", owner)


def test_target_no_pid_file_exit_3(cfg: Config) -> None:
    with pytest.raises(NotRunning, match="no pid in") as caught:
        target(cfg, None)
    assert caught.value.exit_code == 3


def test_target_stale_pid_file_exit_3(cfg: Config, tmp_path: Path) -> None:
    (tmp_path / "a.pid").write_text(f"{_dead_pid()}\n")
    with pytest.raises(NotRunning, match="stale pid file"):
        target(cfg, None)


def test_target_dash_p_uses_the_pipe_in_the_cwd(cfg: Config) -> None:
    owner = os.geteuid() if os.geteuid() == 0 else None  # -p: the process's own uid
    assert target(cfg, os.getpid()) == Target(os.getpid(), Path("avtool_sig.pipe"), owner)
    with pytest.raises(NotRunning, match="no process"):
        target(cfg, _dead_pid())


# ---- the command line --------------------------------------------------------------------------
runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sig", "stats", "virus"], "unexpected extra argument(s) (virus)"),
        (["sig", "virus"], "No such command 'virus'"),
        (["sig", "reload", "--json"], "No such option: --json"),
        (["sig", "--json", "reload"], "go with stats only"),
        (["sig", "--prometheus", "status"], "go with stats only"),
        (["sig", "--json"], "go with stats only"),  # sig alone is reload
        (["sig", "stats", "--json", "--prometheus"], "not both"),
        (["sig", "--json", "stats", "--prometheus"], "not both"),
        (["sig", "-l", "stats"], "-l goes with reload only"),
        (["sig", "-l", "status"], "-l goes with reload only"),
        (["sig", "status", "-l"], "No such option: -l"),
        (["sig", "-p", "0"], "greater than or equal to 1"),
        (["sig", "status", "-p", "0"], "greater than or equal to 1"),
        (["sig", "-t", "0"], "greater than or equal to 0.1"),
        (["sig", "reload", "-t", "0", "virus"], "greater than or equal to 0.1"),
        (["sig", "reload", "everything"], "everything"),
    ],
)
def test_usage_errors_exit_2(args: list[str], says: str) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and says in result.output
    assert "Traceback" not in result.output


FRESHCLAM = sig_cli.Asked(to_syslog=True)  # OnUpdateExecute ... avtool sig -l reload virus


@pytest.mark.parametrize(
    ("args", "action", "what", "asked"),
    [
        (["-l", "reload", "virus"], "reload", "virus", FRESHCLAM),
        (["reload", "-l", "virus"], "reload", "virus", FRESHCLAM),
        (["reload", "virus", "--syslog"], "reload", "virus", FRESHCLAM),
        ([], "reload", None, sig_cli.Asked()),  # sig alone: config and virus database
        (["-l", "-t", "5"], "reload", None, sig_cli.Asked(timeout=5.0, to_syslog=True)),
        (["-p", "7", "-t", "3", "reload", "config"], "reload", "config",
         sig_cli.Asked(pid=7, timeout=3.0)),
        (["reload", "-p", "7", "config", "-t", "3"], "reload", "config",
         sig_cli.Asked(pid=7, timeout=3.0)),
        (["-p", "7", "-t", "3", "reload", "-t", "4"], "reload", None,
         sig_cli.Asked(pid=7, timeout=4.0)),  # given twice: the later one, as for one command
        (["--json", "stats"], "stats", None, sig_cli.Asked(as_json=True)),
        (["stats", "--prometheus", "-p", "9"], "stats", None, sig_cli.Asked(pid=9, prom=True)),
        (["-f", "a.conf", "--set", "a=1", "status", "-f", "b.conf", "--set", "b=2"], "status",
         None, sig_cli.Asked(config_file=Path("b.conf"), sets=("a=1", "b=2"))),
    ],
)  # fmt: skip
def test_options_before_or_after_the_subcommand(
    args: list[str], action: str, what: str | None, asked: sig_cli.Asked,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The command line as today's scripts write it reaches the request unchanged, wherever
    the options stand (the request itself: tests/integration/test_sig.py)."""
    seen: list[tuple[str, str | None, sig_cli.Asked]] = []

    def run(action: sig_cli.Action, what: sig_cli.What | None, asked: sig_cli.Asked) -> None:
        seen.append((action.value, what and what.value, asked))

    monkeypatch.setattr(sig_cli, "run", run)
    result = runner.invoke(app, ["sig", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert seen == [(action, what, asked)]


def test_help_shows_the_paths_resolved_when_asked(tmp_path: Path) -> None:
    conf = tmp_path / "avtool.conf"
    conf.write_text(f'[serve]\npid_file = "{tmp_path}/x.pid"\npipe = "{tmp_path}/x.pipe"\n')
    # app was imported long before this environment existed: the paths are computed at help
    # time, not when the command was registered
    result = runner.invoke(
        app, ["sig", "--help"], env={"COLUMNS": "200", "AVTOOL_CONFIG": str(conf)}
    )
    assert result.exit_code == 0
    assert f"Config file: {conf}" in result.output
    assert f"Pid file: {tmp_path}/x.pid" in result.output
    assert f"Answers pipe: {tmp_path}/x.pipe" in result.output
    assert "Exit status: 0 ok; 1 the daemon reported an error" in result.output
    for command in ("reload", "stats", "status"):
        assert command in result.output
    sub = runner.invoke(
        app, ["sig", "reload", "-h"], env={"COLUMNS": "200", "AVTOOL_CONFIG": str(conf)}
    )
    assert sub.exit_code == 0 and f"Pid file: {tmp_path}/x.pid" in sub.output


def test_help_with_a_broken_config_still_shows_paths(tmp_path: Path) -> None:
    conf = tmp_path / "avtool.conf"
    conf.write_text("[log]\nverbosity = 9\n")
    result = runner.invoke(app, ["sig", "-h"], env={"COLUMNS": "200", "AVTOOL_CONFIG": str(conf)})
    assert result.exit_code == 0 and "has 1 error(s)" in result.output
    assert "Pid file: /run/courier/avtool.pid" in result.output


@pytest.mark.parametrize(
    ("argv", "serve"),
    [
        (["/usr/bin/python3", "/usr/local/bin/avtool", "serve", "--name", "avtool"], True),
        (["/usr/local/bin/avtool", "serve"], True),
        (["python3", "-m", "avtool", "serve", "-f", "x.conf"], True),
        (
            ["/opt/venv/bin/python3.11", "-I", "-X", "utf8", "-m", "avtool", "--debug", "serve"],
            True,
        ),
        (["/usr/local/bin/avtool", "sig", "serve"], False),  # serve as an argument of sig
        (["python3", "-m", "avtool", "scan", "serve"], False),
        (["python3", "-c", "import avtool", "serve"], False),
        (["python3", "-m", "avtoolx", "serve"], False),
        (["sshd:", "/usr/sbin/sshd", "-D"], False),
        (["/usr/bin/sleep", "avtool", "serve"], False),
        (["bash", "/usr/local/bin/avtool", "serve"], False),
        ([], False),
    ],
)
def test_what_counts_as_the_daemon_s_command_line(argv: list[str], serve: bool) -> None:
    assert is_avtool_serve(argv) is serve
