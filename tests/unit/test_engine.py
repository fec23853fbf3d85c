"""Engine logic that needs no clamd: size limit, ordering, round-robin, bad input, the client."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import clamd
import pytest

from avtool.engine import Backend, Engine, Failed, Unchecked
from avtool.engine.client import TcpClient, UnixClient
from tests.conftest import make_config
from tests.support.scanning import scan_path


def engine(*addresses: str, **kw: object) -> Engine:
    return Engine([Backend(a) for a in addresses], **kw)  # type: ignore[arg-type]


def test_from_config_uses_every_engine_key() -> None:
    cfg = make_config(
        "/run/a.sock",
        "127.0.0.1:3310",
        "[::1]:3311",
        balance="round-robin",
        transfer="instream",
        connect_timeout=0.5,
        scan_timeout=7,
        retry_after=3,
        max_size="1M",
    )
    e = Engine.from_config(cfg)
    assert [b.address for b in e.backends] == ["/run/a.sock", "127.0.0.1:3310", "[::1]:3311"]
    assert [b.is_unix for b in e.backends] == [True, False, False]
    assert (e.balance, e.transfer, e.max_size, e.scan_timeout, e.retry_after) == (
        "round-robin",
        "instream",
        1 << 20,
        7.0,
        3.0,
    )
    tcp = e.backends[2].client
    assert isinstance(tcp, TcpClient) and (tcp.host, tcp.port) == ("::1", 3311)
    assert all(b.client.connect_timeout == 0.5 for b in e.backends)


def test_clients_are_the_clamd_package_classes_without_their_shared_socket() -> None:
    unix, tcp = Backend("/run/a.sock").client, Backend("127.0.0.1:3310").client
    assert isinstance(unix, clamd.ClamdUnixSocket) and isinstance(unix, UnixClient)
    assert isinstance(tcp, clamd.ClamdNetworkSocket)
    with pytest.raises(TypeError):
        unix.shutdown()  # inherited: would store a socket on the shared instance


def test_auto_transfer_is_fildes_on_unix_and_instream_on_tcp() -> None:
    assert Backend("/run/a.sock").mode_for("auto") == "fildes"
    assert Backend("10.0.0.1:3310").mode_for("auto") == "instream"
    assert Backend("10.0.0.1:3310").mode_for("scan") == "scan"
    with pytest.raises(ValueError):
        engine("/run/a.sock", transfer="carrier-pigeon")


def test_too_large_is_unchecked_without_contacting_clamd(tmp_path: Path) -> None:
    path = tmp_path / "D1"
    path.write_bytes(b"x" * 11)
    e = engine("/nonexistent/clamd.sock", max_size=10)
    assert scan_path(e, path) == Unchecked("too large: 11 bytes > scan.max_size 10")
    assert e.backends[0].errors == 0 and not e.backends[0].set_aside()


def test_bad_input_is_failed_not_raised(tmp_path: Path) -> None:
    e = engine("/nonexistent/clamd.sock")
    v = scan_path(e, tmp_path / "missing")
    assert isinstance(v, Failed) and v.reason.startswith("cannot open ")
    assert "No such file" in v.reason
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    v = e.scan(fd)  # a closed descriptor
    assert isinstance(v, Failed) and v.reason.startswith("cannot stat the message")
    path = tmp_path / "D1"
    path.write_bytes(b"hello")
    fd = os.open(path, os.O_RDONLY)
    try:
        v = engine("/x.sock", transfer="scan").scan(fd)
        assert v == Failed("clamd.transfer is scan, but the message has no path")
    finally:
        os.close(fd)


def test_ordered_prefers_the_first_healthy_backend() -> None:
    e = engine("/a", "/b", "/c")
    a, b, c = e.backends
    assert e._order(0.0) == [a, b, c]
    a.mark_failed("down", 30.0)
    order = e._order(a.failed_at or 0.0)
    assert order == [b, c, a]  # a set aside: tried last, not skipped


def test_set_aside_backends_are_tried_oldest_failure_first() -> None:
    e = engine("/a", "/b", "/c")
    a, b, c = e.backends
    c.mark_failed("down", 30.0)
    a.mark_failed("down", 30.0)
    b.mark_failed("down", 30.0)
    assert e._order(b.failed_at or 0.0) == [c, a, b]


def test_round_robin_rotates_evenly_across_threads() -> None:
    e = engine("/a", "/b", "/c", balance="round-robin")
    firsts: Counter[str] = Counter()
    lock = threading.Lock()

    def work() -> None:
        for _ in range(300):
            first = e._order(0.0)[0].address
            with lock:
                firsts[first] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert firsts == {"/a": 400, "/b": 400, "/c": 400}
    assert [b.address for b in e._order(0.0)] == ["/a", "/b", "/c"]  # 1200 % 3 == 0


def test_round_robin_skips_a_set_aside_backend_until_last() -> None:
    e = engine("/a", "/b", balance="round-robin")
    a, b = e.backends
    b.mark_failed("down", 30.0)
    now = b.failed_at or 0.0
    assert e._order(now) == [a, b]
    assert e._order(now) == [a, b]


def test_retry_after_zero_never_sets_aside() -> None:
    b = Backend("/a")
    b.mark_failed("down", 0.0)
    assert not b.set_aside() and b.errors == 1 and b.last_error == "down"
