"""The failover machine itself (avtool/engine/failover.py), without I/O: each case is a list of
events (what a driver saw, at a time) and what the machine must say to each: a backend to try
(``"/a"``; ``"/a fresh"`` for the retry on a new connection) with the attempt's end, or the
verdict. Whatever the way, every claim is released at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from avtool.engine import Backend, Clean, Engine, Failed
from avtool.engine.failover import Failover, Step
from avtool.engine.replies import BackendFailure, FileProblem

T0 = time.monotonic()  # Backend.mark_failed stamps with the real clock: stay near it
OK = b"fd[3]: OK\0"
REFUSED = BackendFailure("cannot connect: Connection refused")
TIMEOUT = BackendFailure("timeout: could not connect within 2 s", timeout=True)
GONE = BackendFailure("clamd closed the connection without a reply")


@dataclass
class Case:
    backends: tuple[str, ...]
    events: list[tuple[float, str, object]]  # (time after T0, event, argument)
    expect: list[object]  # per event: "/a", "/a fresh", ("/a", attempt_until) or a Verdict
    deadline: float | None = 100.0
    aside: tuple[str, ...] = ()  # backends that end set aside
    before: tuple[str, ...] = field(default=())  # backends set aside before the scan


CASES = {
    "first answers": Case(
        ("/a", "/b"), [(0, "start", None), (1, "reply", OK)], [("/a", 10), Clean("/a")]
    ),
    "connect failure": Case(
        ("/a", "/b"),
        [(0, "start", None), (0, "fail", REFUSED), (1, "reply", OK)],
        [("/a", 10), ("/b", 10), Clean("/b")],
        aside=("/a",),
    ),
    "garbage reply": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "reply", b"no idea\0"), (2, "reply", OK)],
        [("/a", 10), ("/b", 11), Clean("/b")],
        aside=("/a",),
    ),
    "cut reply": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "reply", b"fd[3]: O"), (2, "reply", OK)],
        [("/a", 10), ("/b", 11), Clean("/b")],
        aside=("/a",),
    ),
    "error about the command fails over": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "reply", b"UNKNOWN COMMAND\0"), (2, "reply", OK)],
        [("/a", 10), ("/b", 11), Clean("/b")],
        aside=("/a",),
    ),
    "error about the file does not": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "reply", b"fd[3]: Access denied. ERROR\0")],
        [("/a", 10), Failed("clamd error: fd[3]: Access denied.", "/a")],
    ),
    "timeout": Case(
        ("/a", "/b"),
        [(0, "start", None), (10, "timeout", None), (11, "reply", OK)],
        [("/a", 10), ("/b", 20), Clean("/b")],
        aside=("/a",),
    ),
    "connect timeout before the deadline fails over": Case(
        ("/a", "/b"),
        [(0, "start", None), (2, "fail", TIMEOUT), (3, "reply", OK)],
        [("/a", 10), ("/b", 12), Clean("/b")],
        deadline=15.0,
        aside=("/a",),
    ),
    "deadline passes mid-failover": Case(
        ("/a", "/b", "/c"),
        [(0, "start", None), (10, "timeout", None), (15, "timeout", None)],
        [("/a", 10), ("/b", 15), Failed("timeout: no verdict from clamd /b by the deadline")],
        deadline=15.0,
        aside=("/a",),  # not /b: the caller's deadline cut it, not clamd's scan_timeout
    ),
    "deadline passed when a failure comes": Case(
        ("/a", "/b"),
        [(0, "start", None), (16, "fail", GONE)],
        [("/a", 10), Failed("timeout: deadline passed after /a: " + GONE.reason)],
        deadline=15.0,
        aside=("/a",),
    ),
    "deadline passed before the start": Case(
        ("/a", "/b"), [(1, "start", None)], [Failed("timeout: deadline passed")], deadline=0.5
    ),
    "no deadline: scan_timeout alone": Case(
        ("/a",), [(5, "start", None), (6, "reply", OK)], [("/a", 15), Clean("/a")], deadline=None
    ),
    "reused session retried once, fresh": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "stale", GONE), (2, "reply", OK)],
        [("/a", 10), ("/a fresh", 11), Clean("/a")],
    ),
    "the retry failing too blames the backend": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "stale", GONE), (2, "stale", GONE), (3, "reply", OK)],
        [("/a", 10), ("/a fresh", 11), ("/b", 12), Clean("/b")],
        aside=("/a",),
    ),
    "a timeout is no retry": Case(
        ("/a", "/b"),
        [(0, "start", None), (10, "timeout", None), (11, "reply", OK)],
        [("/a", 10), ("/b", 20), Clean("/b")],
        aside=("/a",),
    ),
    "all backends fail": Case(
        ("/a", "/b"),
        [(0, "start", None), (0, "fail", REFUSED), (1, "reply", b"\0")],
        [
            ("/a", 10),
            ("/b", 10),
            Failed(
                "all clamd backends failed: /a: cannot connect: Connection refused; "
                "/b: clamd sent an empty reply"
            ),
        ],
        aside=("/a", "/b"),
    ),
    "all set aside before: still tried, oldest failure first": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "fail", REFUSED), (2, "reply", OK)],
        [("/b", 10), ("/a", 11), Clean("/a")],
        aside=("/b",),
        before=("/b", "/a"),
    ),
    "unreadable message: no failover": Case(
        ("/a", "/b"),
        [(0, "start", None), (1, "unreadable", FileProblem("cannot read the message: EIO"))],
        [("/a", 10), Failed("cannot read the message: EIO")],
    ),
    "abandoned": Case(("/a", "/b"), [(0, "start", None), (1, "abandon", None)], [("/a", 10), None]),
}


def play(run: Failover, event: str, arg: object, now: float) -> Step | None:
    if event == "start":
        return run.next(now)
    if event == "reply":
        assert isinstance(arg, bytes)
        return run.received(arg, now)
    if event in ("fail", "stale"):
        assert isinstance(arg, BackendFailure)
        return run.failed(arg, now, stale=event == "stale")
    if event == "timeout":
        return run.timed_out(now)
    if event == "unreadable":
        assert isinstance(arg, FileProblem)
        return run.unreadable(arg)
    run.abandon()
    return None


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_failover(case: Case) -> None:
    engine = Engine([Backend(a) for a in case.backends], scan_timeout=10.0, retry_after=60.0)
    by_name = {b.address: b for b in engine.backends}
    for name in case.before:  # in this order: the first is the oldest failure
        by_name[name].mark_failed("down", 60.0)
        time.sleep(0.001)
    deadline = None if case.deadline is None else T0 + case.deadline
    run = Failover(engine, T0 + case.events[0][0], deadline)
    for (at, event, arg), want in zip(case.events, case.expect, strict=True):
        got = play(run, event, arg, T0 + at)
        if isinstance(want, tuple):  # a backend, and the attempt's end
            name, until = want
            assert isinstance(got, Backend) and got.address == name.split()[0], (event, got)
            assert run.fresh == name.endswith("fresh")
            assert run.attempt_until == pytest.approx(T0 + until)
            assert got.in_flight == 1  # claimed while tried
        else:
            assert got == want
    assert all(b.in_flight == 0 for b in engine.backends)  # every claim released
    now = time.monotonic()
    assert {b.address for b in engine.backends if b.set_aside(now)} == set(case.aside)


def test_a_verdict_marks_the_backend_answered() -> None:
    engine = Engine([Backend("/a")], scan_timeout=10.0)
    a = engine.backends[0]
    a.mark_failed("down", 60.0)
    run = Failover(engine, T0)
    assert run.next(T0) is a
    assert run.received(OK, T0 + 1) == Clean("/a")
    assert not a.set_aside() and a.scans == 1


def test_scan_replies_name_the_path() -> None:
    engine = Engine([Backend("/a")], transfer="scan", scan_timeout=10.0)
    run = Failover(engine, T0, path="/srv/m")
    run.next(T0)
    reply = b"/srv/m: Access denied. ERROR\0"  # about the file: Failed, no failover
    assert run.received(reply, T0 + 1) == Failed("clamd error: /srv/m: Access denied.", "/a")
