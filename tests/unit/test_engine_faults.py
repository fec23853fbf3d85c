"""The engine against fake clamds that hang, garble, cut, reset or refuse (tests/fakes/clamd.py).

No real clamd here: these run in well under a second each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from avtool.engine import Backend, Clean, Engine, Failed, Unchecked, session
from avtool.errors import EngineError
from tests.fakes.clamd import FakeClamd
from tests.support.scanning import scan_path

MakeFake = Callable[..., FakeClamd]


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="avf", dir="/tmp"))  # short: 108-byte socket paths
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake(sockdir: Path) -> Iterator[MakeFake]:
    fakes: list[FakeClamd] = []

    def make(behaviour: str = "reply", **kw: object) -> FakeClamd:
        f = FakeClamd(sockdir / f"f{len(fakes)}.sock", behaviour, **kw)  # type: ignore[arg-type]
        fakes.append(f.start())
        return f

    yield make
    for f in fakes:
        f.stop()


@pytest.fixture
def message(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "D1"
    path.write_bytes(b"From: a@example.com\n\nHello.\n" * 100)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


def engine(*addresses: str, **kw: object) -> Engine:
    scan_timeout = float(kw.pop("scan_timeout", 5.0))  # type: ignore[arg-type]
    connect_timeout = float(kw.pop("connect_timeout", 1.0))  # type: ignore[arg-type]
    backends = [
        Backend(a, connect_timeout=connect_timeout, scan_timeout=scan_timeout) for a in addresses
    ]
    return Engine(backends, scan_timeout=scan_timeout, **kw)  # type: ignore[arg-type]


def test_hanging_clamd_times_out_within_scan_timeout(fake: MakeFake, message: int) -> None:
    f = fake("hang")
    e = engine(f.address, scan_timeout=0.3)
    started = time.monotonic()
    v = e.scan(message)
    took = time.monotonic() - started
    assert isinstance(v, Failed)
    assert v.reason.startswith("all clamd backends failed:") and "timeout" in v.reason
    assert 0.3 <= took < 1.3
    assert e.backends[0].set_aside() and e.backends[0].errors == 1


def test_caller_deadline_cuts_a_hang_without_blaming_clamd(fake: MakeFake, message: int) -> None:
    f = fake("hang")
    e = engine(f.address, scan_timeout=10.0)
    started = time.monotonic()
    v = e.scan(message, deadline=started + 0.3)
    assert isinstance(v, Failed) and v.reason.startswith("timeout")
    assert time.monotonic() - started < 1.3
    assert not e.backends[0].set_aside() and e.backends[0].errors == 0


def test_deadline_already_past_contacts_nobody(fake: MakeFake, message: int) -> None:
    f = fake("reply", reply=b"fd[3]: OK\0")
    v = engine(f.address).scan(message, deadline=time.monotonic() - 1)
    assert isinstance(v, Failed) and v.reason.startswith("timeout")
    assert f.connections == 0


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("garbage", "unexpected reply from clamd: 'HELLO, I AM NOT CLAMD'"),
        ("mid_reply", "mid-reply: 'fd[5]: Eicar-Test-Sig'"),
        ("reset", "connection"),
    ],
)
def test_protocol_faults_fail_and_set_the_backend_aside(
    fake: MakeFake, message: int, behaviour: str, reason: str
) -> None:
    f = fake(behaviour)
    e = engine(f.address)
    v = e.scan(message)
    assert isinstance(v, Failed)
    assert v.reason.startswith(f"all clamd backends failed: {f.address}: ")
    assert reason in v.reason
    b = e.backends[0]
    assert b.set_aside() and b.errors == 1 and b.last_error is not None


def test_refused_connection_fails(sockdir: Path, message: int) -> None:
    v = engine(str(sockdir / "none.sock")).scan(message)
    assert isinstance(v, Failed) and "cannot connect: No such file or directory" in v.reason


def test_connect_timeout_bounds_a_tcp_connect(message: int) -> None:
    # A listener whose accept queue is full drops SYNs: connect() would wait for minutes.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fillers.append(c)
    try:
        time.sleep(0.05)
        started = time.monotonic()
        v = engine(f"127.0.0.1:{port}", connect_timeout=0.2).scan(message)
        assert isinstance(v, Failed) and "could not connect within 0.2 s" in v.reason
        assert time.monotonic() - started < 1.0
    finally:
        for c in fillers:
            c.close()
        srv.close()


def test_failover_to_next_and_set_aside_until_retry_after(fake: MakeFake, message: int) -> None:
    bad, good = fake("garbage"), fake("reply", reply=b"fd[7]: OK\0")
    e = engine(bad.address, good.address, retry_after=0.3)
    assert e.scan(message) == Clean(good.address)
    assert e.scan(message) == Clean(good.address)
    assert bad.connections == 1  # set aside: not contacted for the second scan
    time.sleep(0.35)
    assert e.scan(message) == Clean(good.address)
    assert bad.connections == 2  # retry_after passed: tried first again, failed again
    assert [b.scans for b in e.backends] == [0, 3]
    assert [b.errors for b in e.backends] == [2, 0]


def test_every_backend_set_aside_is_still_tried(fake: MakeFake, message: int) -> None:
    bad = fake("garbage")
    e = engine(bad.address, retry_after=30.0)
    e.scan(message)
    assert e.backends[0].set_aside()
    e.scan(message)
    assert bad.connections == 2


def test_set_aside_backend_recovers_when_it_answers(fake: MakeFake, message: int) -> None:
    f = fake("reply", reply=b"fd[3]: OK\0")
    e = engine(f.address)
    e.backends[0].mark_failed("earlier", 30.0)
    assert e.scan(message) == Clean(f.address)
    assert not e.backends[0].set_aside()


def test_all_backends_failing_lists_each_reason(fake: MakeFake, message: int) -> None:
    a, b = fake("garbage"), fake("mid_reply")
    v = engine(a.address, b.address).scan(message)
    assert isinstance(v, Failed)
    assert v.reason.startswith("all clamd backends failed: ")
    assert f"{a.address}: unexpected reply" in v.reason and f"{b.address}: clamd closed" in v.reason


def test_instream_size_limit_reply_is_unchecked(fake: MakeFake, tmp_path: Path) -> None:
    f = fake("size_limit", limit=64 << 10)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    v = scan_path(engine(f.address, transfer="instream"), big)
    assert v == Unchecked("too large for clamd StreamMaxLength", f.address)


def test_instream_reply_lost_in_reset_but_clamd_alive_is_unchecked(
    fake: MakeFake, tmp_path: Path
) -> None:
    f = fake("lost_reply", limit=64 << 10)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    e = engine(f.address, transfer="instream")
    assert scan_path(e, big) == Unchecked("too large for clamd StreamMaxLength", f.address)
    assert f.commands == [b"zINSTREAM", b"zPING"]  # PING told a live clamd from a dead one
    assert not e.backends[0].set_aside()


def test_instream_reset_by_a_dead_clamd_is_failed(fake: MakeFake, tmp_path: Path) -> None:
    f = fake("reset")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    v = scan_path(engine(f.address, transfer="instream"), big)
    assert isinstance(v, Failed) and "connection lost while streaming" in v.reason


@pytest.mark.parametrize("way", ["sendfile", "buffered"])
def test_instream_sends_the_whole_file_in_order(
    sockdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    if way == "buffered":
        monkeypatch.setattr(session, "SMALL", 1 << 30)  # the one-buffer path, for any size
    got: list[bytes] = []
    sizes: list[int] = []

    class Recorder(FakeClamd):
        def _read_stream(self, conn: socket.socket, buf: bytes) -> None:
            data = b""
            while True:
                buf = self._recv_until(conn, buf, lambda b: len(b) >= 4)
                size = int.from_bytes(buf[:4], "big")
                sizes.append(size)
                if size == 0:
                    got.append(data)
                    return
                buf = buf[4:]
                while len(buf) < size:
                    more = conn.recv(size - len(buf))
                    if not more:
                        return
                    buf += more
                data, buf = data + buf[:size], buf[size:]

    f = Recorder(sockdir / "rec.sock")
    f.start()
    try:
        payload = os.urandom((2 << 20) + 123)
        path = tmp_path / "msg"
        path.write_bytes(payload)
        fd = os.open(path, os.O_RDONLY)
        os.lseek(fd, 77, os.SEEK_SET)
        try:
            assert engine(f.address, transfer="instream").scan(fd) == Clean(f.address)
            assert os.lseek(fd, 0, os.SEEK_CUR) == 77  # the caller's offset did not move
        finally:
            os.close(fd)
        assert got == [payload]
        assert sizes == [1 << 20, 1 << 20, 123, 0]  # 1 MiB chunks, then the end marker
    finally:
        f.stop()


def test_backend_commands_raise_engine_error_with_reason(fake: MakeFake, sockdir: Path) -> None:
    hang, garbage = fake("hang"), fake("garbage")
    with pytest.raises(EngineError, match="timeout"):
        Backend(hang.address, scan_timeout=0.2).version()
    with pytest.raises(EngineError, match="cannot connect"):
        Backend(str(sockdir / "none.sock")).ping()
    with pytest.raises(EngineError, match="unexpected reply to RELOAD"):
        Backend(garbage.address).reload()
    info = Backend(garbage.address).describe()
    assert not info.reachable and info.error and "VERSION" in info.error
    Backend(garbage.address).ping()  # the fake answers PING properly


def test_reply_fake_answers_pong_and_fixed_reply(fake: MakeFake, message: int) -> None:
    f = fake("reply", reply=b"fd[4]: Eicar-Test-Signature FOUND\0")
    v = engine(f.address).scan(message)
    assert v.__class__.__name__ == "Infected" and v.backend == f.address
    assert f.commands == [b"zFILDES"]
