"""Balance least-busy and the in-flight count it uses: no clamd, the blocking driver's attempt
(engine.attempt, its only I/O) replaced by a sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from avtool.engine import Backend, Clean, Engine, Failed
from avtool.engine import engine as engine_module
from avtool.engine.replies import BackendFailure
from tests.conftest import make_config
from tests.support.scanning import scan_path


def engine(*addresses: str, **kw: object) -> Engine:
    return Engine([Backend(a) for a in addresses], **kw)  # type: ignore[arg-type]


@pytest.fixture
def message(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "m.eml"
    path.write_bytes(b"Subject: x\n\nhello\n")
    yield path


def fake_scans(
    monkeypatch: pytest.MonkeyPatch, behave: Callable[[Backend], None]
) -> dict[str, int]:
    """Replace engine.attempt: ``behave(backend)`` sleeps or raises; returns the highest
    number of scans seen in flight at once on each backend."""
    peak: dict[str, int] = {}
    lock = threading.Lock()

    def attempt(backend: Backend, *args: object) -> bytes:
        with lock:
            peak[backend.address] = max(peak.get(backend.address, 0), backend.in_flight)
        behave(backend)
        return b"fd[3]: OK\0"

    monkeypatch.setattr(engine_module, "attempt", attempt)
    return peak


def scan_times(engine: Engine, message: Path, times: int) -> None:
    for _ in range(times):
        scan_path(engine, message)


def run_threads(n: int, work: Callable[[], None]) -> None:
    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_least_busy_is_a_config_choice() -> None:
    e = Engine.from_config(make_config("/a", "/b", balance="least-busy"))
    assert e.balance == "least-busy"
    with pytest.raises(ValueError, match="unknown balance"):
        engine("/a", balance="fewest")


def test_least_busy_starts_with_the_backend_with_fewest_in_flight() -> None:
    e = engine("/a", "/b", "/c", balance="least-busy")
    a, b, c = e.backends
    a.claim()
    a.claim()
    b.claim()
    assert e._order(0.0) == [c, b, a]
    c.claim()
    c.claim()
    c.claim()
    assert e._order(0.0) == [b, a, c]


def test_least_busy_ties_take_turns() -> None:
    e = engine("/a", "/b", "/c", balance="least-busy")
    firsts = [e._order(0.0)[0].address for _ in range(6)]
    assert firsts == ["/a", "/b", "/c"] * 2


def test_least_busy_puts_a_set_aside_backend_last_even_when_idle() -> None:
    e = engine("/a", "/b", balance="least-busy")
    a, b = e.backends
    b.claim()
    a.mark_failed("down", 30.0)
    assert e._order(a.failed_at or 0.0) == [b, a]


def test_in_flight_returns_to_zero_after_answers_failures_and_deadlines(
    monkeypatch: pytest.MonkeyPatch, message: Path
) -> None:
    def behave(b: Backend) -> None:
        if b.address == "/a":
            raise BackendFailure("cannot connect: refused")

    fake_scans(monkeypatch, behave)
    e = engine("/a", "/b", balance="least-busy", retry_after=0.0)
    a, b = e.backends
    for _ in range(4):
        assert scan_path(e, message) == Clean("/b")
    assert (a.errors, b.scans) == (2, 4)  # ties take turns: /a was first twice, then retried
    fd = message.open("rb")
    with fd:
        v = e.scan(fd.fileno(), deadline=time.monotonic() - 1)  # passed before any attempt
    assert isinstance(v, Failed) and v.reason.startswith("timeout")
    assert (a.in_flight, b.in_flight) == (0, 0)


def test_least_busy_never_stacks_scans_on_one_backend(
    monkeypatch: pytest.MonkeyPatch, message: Path
) -> None:
    """4 threads, 2 equal backends: the choice and its count are atomic, so neither backend
    ever has more than 2 in flight. ordered puts all 4 on the first one."""
    peak = fake_scans(monkeypatch, lambda b: time.sleep(0.005))

    for balance, limit in (("least-busy", 2), ("ordered", 4)):
        peak.clear()
        e = engine("/a", "/b", balance=balance)
        run_threads(4, partial(scan_times, e, message, 40))
        assert sum(b.scans for b in e.backends) == 160
        assert max(peak.values()) <= limit
        if balance == "ordered":
            assert set(peak) == {"/a"} and peak["/a"] > 2  # the contrast: it does stack
        assert all(b.in_flight == 0 for b in e.backends)


def test_least_busy_sends_fewer_scans_to_a_slow_backend(
    monkeypatch: pytest.MonkeyPatch, message: Path
) -> None:
    fake_scans(monkeypatch, lambda b: time.sleep(0.002 if b.address == "/fast" else 0.04))
    counts = {}
    for balance in ("least-busy", "round-robin"):
        e = engine("/fast", "/slow", balance=balance)
        run_threads(4, partial(scan_times, e, message, 25))
        fast, slow = e.backends
        assert fast.scans + slow.scans == 100
        counts[balance] = (fast.scans, slow.scans)
    assert counts["round-robin"] == (50, 50)
    fast_scans, slow_scans = counts["least-busy"]
    assert fast_scans > 3 * slow_scans, counts
