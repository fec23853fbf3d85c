"""clamd sessions (engine/session.py) against a socket pair standing in for clamd's end: the
reply framing, numbering, cut and closed replies, and the pool's idle rules. The real clamd
side is tested in tests/integration/test_loop.py."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.engine import session as S
from avtool.engine.replies import BackendFailure


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    directory = tempfile.mkdtemp(prefix="avss", dir="/tmp")
    path = os.path.join(directory, "clamd.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    srv.settimeout(5)
    yield srv, path
    srv.close()
    os.unlink(path)
    os.rmdir(directory)


def connected(listener: tuple[socket.socket, str]) -> tuple[S.Session, socket.socket]:
    srv, path = listener
    session = S.Session(path, 1.0)
    peer, _ = srv.accept()
    peer.settimeout(5)
    assert peer.recv(64) == b"zIDSESSION\0"
    return session, peer


def wait_reply(session: S.Session) -> bytes | None:
    session.sock.settimeout(5)  # the test waits; the loop would use epoll
    try:
        return session.receive()
    finally:
        session.sock.setblocking(False)


def _count_writes(session: S.Session) -> list[str]:
    """The names of the socket's write calls from now on."""
    writes: list[str] = []
    real = session.sock

    class Counting:
        def __getattr__(self, name: str) -> object:
            attr = getattr(real, name)
            if name not in ("send", "sendall", "sendmsg"):
                return attr

            def counted(*args: object, **kwargs: object) -> object:
                writes.append(name)
                return attr(*args, **kwargs)

            return counted

    session.sock = Counting()  # type: ignore[assignment]
    return writes


def test_fildes_sends_command_and_descriptor_in_one_write_and_strips_the_number(
    listener: tuple[socket.socket, str], tmp_path: Path
) -> None:
    session, peer = connected(listener)
    data = tmp_path / "m"
    data.write_bytes(b"hello")
    fd = os.open(data, os.O_RDONLY)
    try:
        writes = _count_writes(session)
        session.send_fildes(fd)
        # One write: the command, and the byte after it carrying the fd (notes 2). clamd
        # refuses the fd on the command's own bytes; two writes cost it a second wake-up.
        assert writes == ["sendmsg"]
        msg, fds, _, _ = socket.recv_fds(peer, 64, 2)
        assert msg == b"zFILDES\0\0" and len(fds) == 1
        assert os.read(fds[0], 5) == b"hello"  # the same file
        os.close(fds[0])
        assert session.receive() is None  # nothing yet: the loop waits again
        peer.sendall(b"1: fd[9]: O")
        assert wait_reply(session) is None  # cut: more to come
        peer.sendall(b"K\0")
        assert wait_reply(session) == b"fd[9]: OK\0"
        session.send_fildes(fd)
        peer.recv(64)
        peer.sendall(b"2: fd[9]: Eicar FOUND\0")
        assert wait_reply(session) == b"fd[9]: Eicar FOUND\0"
        assert (session.sent, session.answered) == (2, 2)
    finally:
        os.close(fd)
        session.close()
        peer.close()


@pytest.mark.parametrize(
    ("sent", "why"),
    [
        (b"2: fd[9]: OK\0", "unexpected reply"),  # another command's number
        (b"fd[9]: OK\0", "unexpected reply"),  # no number: not a session reply
        (b"", "without a reply"),
        (b"1: fd[9]: O", "mid-reply"),  # then closed
    ],
)
def test_a_reply_that_is_not_ours_or_cut_is_a_backend_failure(
    listener: tuple[socket.socket, str], sent: bytes, why: str
) -> None:
    session, peer = connected(listener)
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        session.send_fildes(fd)
        peer.recv(64)
        peer.sendall(sent)
        peer.close()
        with pytest.raises(BackendFailure, match=why):
            for _ in range(3):
                wait_reply(session)
    finally:
        os.close(fd)
        session.close()


def test_sending_on_a_session_clamd_closed_fails(listener: tuple[socket.socket, str]) -> None:
    session, peer = connected(listener)
    peer.close()
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        with pytest.raises(BackendFailure, match="passing the file descriptor"):
            for _ in range(3):  # the first send may still land in the buffer
                session.send_fildes(fd)
    finally:
        os.close(fd)
        session.close()


def test_no_clamd_is_a_backend_failure(tmp_path: Path) -> None:
    with pytest.raises(BackendFailure, match="cannot connect"):
        S.Session(str(tmp_path / "none.sock"), 1.0)


def test_pool_reuses_the_last_session_and_expires_idle_ones(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, path = listener
    pool = S.SessionPool(path, 1.0)
    first = pool.take(100.0)
    second = pool.take(100.0)  # none idle: a second connection
    assert first is not second and not first.reused
    pool.give_back(first, 100.0)
    pool.give_back(second, 105.0)
    assert pool.take(106.0) is second and second.reused  # last used first
    pool.give_back(second, 106.0)
    closed = pool.expire(100.0 + S.IDLE_MAX)
    assert closed == [first] and first.sock.fileno() == -1
    assert pool.take(106.0 + S.IDLE_MAX) is not second  # too old: closed, a new one
    assert second.sock.fileno() == -1
    assert pool.close() == []
    for _ in range(3):
        srv.accept()[0].close()
