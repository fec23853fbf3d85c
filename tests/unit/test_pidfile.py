"""Pid file (control/pidfile.py) and the daemon's end of the answers pipe (control/fifo.py): no
symlinks followed, stale files replaced, live ones respected."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from avtool.control.fifo import Answer
from avtool.control.pidfile import PidFile, alive, read_pid
from avtool.control.wire import END_ERROR, END_OK
from avtool.errors import DaemonError


def test_pid_file_created_and_removed(tmp_path: Path) -> None:
    pid = PidFile(tmp_path / "avtool.pid")
    pid.create()
    assert read_pid(pid.path) == os.getpid()
    pid.remove()
    assert not pid.path.exists()


def test_pid_file_refuses_a_live_daemon(tmp_path: Path) -> None:
    path = tmp_path / "avtool.pid"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(DaemonError, match="already running"):
        PidFile(path).create()
    assert read_pid(path) == os.getppid()  # untouched


def test_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = tmp_path / "avtool.pid"
    path.write_text(dead.stdout)
    assert not alive(int(dead.stdout))
    PidFile(path).create()
    assert read_pid(path) == os.getpid()


def test_pid_file_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "avtool.pid"
    link.symlink_to(victim)
    pid = PidFile(link)
    pid.create()  # the link is not a live pid file: replaced by a regular file
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and read_pid(link) == os.getpid()


def test_remove_leaves_another_daemons_file(tmp_path: Path) -> None:
    pid = PidFile(tmp_path / "avtool.pid")
    pid.create()
    pid.path.write_text("1\n")  # replaced meanwhile by another daemon
    pid.remove()
    assert pid.path.read_text() == "1\n"


def test_answer_goes_to_a_waiting_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "avtool.pipe"
    os.mkfifo(fifo, 0o600)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(fifo.read_text().splitlines()))
    reader.start()
    for _ in range(100):  # wait until the reader has the fifo open
        answer = Answer(fifo)
        if answer.to_pipe:
            break
        threading.Event().wait(0.01)
    answer.line("config: reloaded")
    answer.finish(True)
    reader.join(5)
    assert got == ["config: reloaded", END_OK]


def test_answer_without_reader_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "avtool.pipe"
    os.mkfifo(fifo, 0o600)  # nobody reads it: opening for write would block; we must not
    answer = Answer(fifo)
    assert not answer.to_pipe
    answer.line("virus: reloaded")
    answer.finish(False)
    err = capsys.readouterr().err
    assert "avtool: virus: reloaded" in err and END_ERROR not in err


def test_answer_never_writes_to_a_regular_file(tmp_path: Path) -> None:
    plain = tmp_path / "avtool.pipe"
    plain.write_text("")
    assert not Answer(plain).to_pipe
    assert plain.read_text() == ""
