"""The daemon's event loop (avtool/daemon/loop.py) with clamd sessions: kept across messages, and
what happens when clamd ends one (IdleTimeout, a restart, a close just as it is used)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clamd_harness import ClamdServer
from tests.support.serve import EICAR, Daemon, config_for, mail, start_daemon

pytestmark = pytest.mark.clamd
VIRUS = "550 "


def sockets(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for name in os.listdir(fd_dir):
        try:
            count += os.readlink(fd_dir / name).startswith("socket:")
        except FileNotFoundError:
            continue
    return count


@pytest.fixture
def own_clamd() -> Iterator[ClamdServer]:
    """A clamd of its own (these tests stop it, or it ends idle sessions after 2 s)."""
    directory = Path(tempfile.mkdtemp(prefix="avl", dir="/tmp"))
    server = ClamdServer(directory, extra={"ReadTimeout": "2"}).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemon(own_clamd: ClamdServer) -> Iterator[Daemon]:
    d = start_daemon(config_for(str(own_clamd.unix_socket)))
    yield d
    if d.proc.poll() is None:
        d.stop()


def verdicts(d: Daemon) -> tuple[str, str, str]:
    clean, virus = d.spool.message(mail()), d.spool.message(mail(attachment=EICAR))
    return d.filter(*clean), d.filter(*virus), d.filter(*clean)


def test_one_session_serves_message_after_message(daemon: Daemon) -> None:
    before = sockets(daemon.proc.pid)
    first = verdicts(daemon)
    after_first = sockets(daemon.proc.pid)
    for _ in range(10):
        assert verdicts(daemon) == first
    assert first[0] == "200 Ok\n" and first[1].startswith(VIRUS) and first[2] == "200 Ok\n"
    # One connection to clamd more than before, kept (not one per message), and still one
    # after 30 more messages, an infected one among each three.
    assert after_first == before + 1
    assert sockets(daemon.proc.pid) == after_first
    assert "set aside" not in daemon.log()


def test_a_session_clamd_ended_idle_costs_nothing(daemon: Daemon) -> None:
    before = sockets(daemon.proc.pid)
    assert verdicts(daemon)[0] == "200 Ok\n"
    time.sleep(3.5)  # clamd ends the idle session; the loop sees its end
    assert sockets(daemon.proc.pid) == before
    clean, virus, _ = verdicts(daemon)
    assert clean == "200 Ok\n" and virus.startswith(VIRUS)
    assert "set aside" not in daemon.log()


def test_a_clamd_restart_between_messages_costs_nothing(
    daemon: Daemon, own_clamd: ClamdServer
) -> None:
    assert verdicts(daemon)[0] == "200 Ok\n"
    own_clamd.stop()
    own_clamd.start()
    clean, virus, _ = verdicts(daemon)
    assert clean == "200 Ok\n" and virus.startswith(VIRUS)
    assert "set aside" not in daemon.log()


class ClosingClamd:
    """A fake clamd (fault injection) that speaks IDSESSION and answers OK, but ends its
    first session without a reply at that session's second command: a session closed by
    clamd just as the filter reuses it. Later connections are answered normally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self.sessions = 0  # IDSESSION connections (the daemon's start talks on others first)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn:
            buf, sent, first = b"", 0, False
            while True:
                msg, fds, _, _ = socket.recv_fds(conn, 4096, 4)
                for fd in fds:
                    os.close(fd)
                if not msg:
                    return
                buf += msg
                while b"\0" in buf:
                    command, buf = buf.split(b"\0", 1)
                    if command == b"zIDSESSION":
                        self.sessions += 1
                        first = self.sessions == 1
                    if command in (b"", b"zIDSESSION"):
                        continue
                    sent += 1
                    if first and sent == 2:
                        return  # closed without a reply
                    conn.sendall(b"%d: fd[5]: OK\0" % sent)

    def close(self) -> None:
        self.listener.close()


def test_a_session_closed_as_it_is_reused_is_tried_once_more(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="avc", dir="/tmp"))
    fake = ClosingClamd(directory / "clamd.sock")
    d = start_daemon(config_for(str(fake.path)))
    try:
        message = d.spool.message(mail())
        assert d.filter(*message) == "200 Ok\n"
        assert d.filter(*message) == "200 Ok\n"  # the first session fails; a new one answers
        assert fake.sessions == 2
        assert "set aside" not in d.log()
    finally:
        d.stop()
        fake.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_long_queue_fails_over_when_clamd_dies_and_the_loop_goes_on(tmp_path: Path) -> None:
    """serve.max_scans = 1 and a clamd that never answers: 250 messages queue for the one
    slot. Then clamd dies: every queued scan fails at once, one after the other (not nested:
    250 deep would pass Python's recursion limit), each message gets its 4xx, and the daemon
    still serves once clamd is back."""
    from tests.fakes.clamd import FakeClamd

    directory = Path(tempfile.mkdtemp(prefix="avq", dir="/tmp"))
    directory.chmod(0o755)  # noqa: S103 - the real clamd's user traverses it later
    fake = FakeClamd(directory / "clamd.sock", "hang").start()
    conf = config_for(fake.address, "max_scans = 1\n").replace(
        "message_timeout = 20.0", "message_timeout = 60.0"
    )
    d = start_daemon(conf)
    replies: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        reply = d.filter(*d.spool.message(mail()))
        with lock:
            replies.append(reply)

    try:
        threads = [threading.Thread(target=send) for _ in range(250)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # all connected: one scan hangs, the rest wait for the slot
        fake.stop()
        for t in threads:
            t.join(30)
        assert len(replies) == 250
        assert all(r.startswith("432 ") for r in replies), set(replies)
        assert d.proc.poll() is None and "Traceback" not in d.log()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fake.path)
        real = ClamdServer(directory).start()  # a real clamd at the same socket
        try:
            assert d.filter(*d.spool.message(mail())) == "200 Ok\n"
        finally:
            real.stop()
    finally:
        assert d.stop() == 0
        shutil.rmtree(directory, ignore_errors=True)
