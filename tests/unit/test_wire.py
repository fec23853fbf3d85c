"""The sig channel's messages (control/wire.py): the signals, the counters and their lines, read
back by the client exactly as the daemon wrote them; and the counters in Prometheus' format."""

from __future__ import annotations

import os
import re
import signal
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avtool.control import wire
from avtool.control.client import Target, request
from avtool.control.prometheus import prometheus
from avtool.control.wire import Backend, Stats
from avtool.courier.protocol import Reply
from avtool.daemon import policy, server
from avtool.daemon.pipeline import Outcome
from avtool.daemon.reload import Reloader
from avtool.daemon.stats import Stats as DaemonStats
from avtool.engine import Clean, Engine, Failed, Infected, Unchecked
from tests.conftest import make_config


# ---- the signals -------------------------------------------------------------------------------
def test_one_signal_per_request_and_the_daemon_reads_the_same_table() -> None:
    assert wire.reload_signal(None) == signal.SIGHUP  # avfilter_sig without argument: both
    assert wire.reload_signal("config") == signal.SIGUSR1
    assert wire.reload_signal("virus") == signal.SIGUSR2
    for what in wire.RELOAD_WHAT:
        asked = wire.RELOAD_SIGNALS[wire.reload_signal(what)]
        assert (asked.config, asked.virus) == (what != "virus", what != "config")
    assert wire.STATS_SIGNAL not in wire.RELOAD_SIGNALS
    assert len({*wire.RELOAD_SIGNALS, wire.STATS_SIGNAL, *server.STOP_SIGNALS}) == 7
    with pytest.raises(ValueError, match="everything"):
        wire.reload_signal("everything")


def test_the_counted_actions_are_the_policy_s() -> None:
    assert typing.get_args(policy.Action) == wire.ACTIONS


# ---- the counters as the client reads them -------------------------------------------------------
STATS_LINES = (
    "pid 4242",
    "socket /var/lib/courier/allfilters/avtool",
    "messages 10",
    "clean 6",
    "infected 2",
    "unchecked 0",
    "failed 1",
    "exempt 0",
    "accept 6",
    "pass 0",
    "reject 2",
    "drop 0",
    "quarantine 0",
    "defer 1",
    "deferred 2",
    "timeouts 1",
    "errors 0",
    "p50_ms 1.5",
    "p99_ms -",
    "uptime_s 12.5",
    "clamd /run/clamav/clamd.ctl reachable=yes scans=9 errors=1 db=27001 "
    "version=ClamAV 1.4.6/27001/Tue Nov 25 08:00:00 2026",
    "clamd 10.0.0.2:3310 reachable=no scans=0 errors=3 in_flight=2 aside=yes db=unknown version=-",
    'clamd /tmp/we"ird\\path reachable=yes scans=0 errors=0 db=unknown version=ClamAV 1.4.6',
)


def test_parse_stats_types_every_field() -> None:
    s = Stats.parse(STATS_LINES)
    assert (s.pid, s.socket) == (4242, "/var/lib/courier/allfilters/avtool")
    assert s.counters["messages"] == 10 and s.counters["p50_ms"] == 1.5
    assert s.counters["p99_ms"] is None and s.counters["uptime_s"] == 12.5
    first, second, _ = s.backends
    assert (first.reachable, first.scans, first.errors, first.db) == (True, 9, 1, 27001)
    assert first.version == "ClamAV 1.4.6/27001/Tue Nov 25 08:00:00 2026"
    assert (second.address, second.reachable, second.db, second.version) == (
        "10.0.0.2:3310", False, None, None)  # fmt: skip
    assert (second.in_flight, second.aside) == (2, True)
    assert (first.in_flight, first.aside) == (0, False)  # an older daemon's line: defaults
    flat = s.as_dict()
    assert flat["messages"] == 10 and flat["pid"] == 4242
    assert flat["clamd"][0]["db"] == 27001  # type: ignore[index]


SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z]+="(?:[^"\\\n]|\\.)*"\})? (NaN|-?\d+(?:\.\d+)?)$')


def test_prometheus_text_format() -> None:
    text = prometheus(Stats.parse(STATS_LINES))
    assert text.endswith("\n")
    declared: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in declared, f"{name} declared twice"
            declared[name] = ""
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name in declared and kind in ("counter", "gauge")
            declared[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert declared.get(m.group(1)), f"{m.group(1)}: sample before its # TYPE"
            samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    verdicts = [v for k, v in samples.items() if k.startswith("avtool_messages_total{")]
    assert sum(verdicts) == 10  # every message under exactly one verdict
    assert samples['avtool_messages_total{verdict="timeout"}'] == 1
    assert samples['avtool_actions_total{action="reject"}'] == 2
    assert samples['avtool_scan_ms{quantile="0.5"}'] == 1.5
    assert 'avtool_scan_ms{quantile="0.99"} NaN' in text
    assert samples['avtool_clamd_errors_total{backend="10.0.0.2:3310"}'] == 3
    assert samples['avtool_clamd_up{backend="10.0.0.2:3310"}'] == 0
    assert samples['avtool_clamd_in_flight{backend="10.0.0.2:3310"}'] == 2
    assert samples['avtool_clamd_set_aside{backend="10.0.0.2:3310"}'] == 1
    assert samples['avtool_clamd_set_aside{backend="/run/clamav/clamd.ctl"}'] == 0
    assert 'avtool_clamd_up{backend="/tmp/we\\"ird\\\\path"} 1' in text
    assert samples['avtool_clamd_db_version{backend="/run/clamav/clamd.ctl"}'] == 27001
    assert not any(k.startswith('avtool_clamd_db_version{backend="10.') for k in samples)
    assert samples["avtool_uptime_seconds"] == 12.5 and declared["avtool_uptime_seconds"] == "gauge"


def test_prometheus_of_a_fresh_daemon() -> None:
    text = prometheus(Stats(1, None, {"messages": 0, "p50_ms": None, "uptime_s": 0.1}))
    assert 'avtool_messages_total{verdict="clean"} 0' in text
    assert 'avtool_scan_ms{quantile="0.5"} NaN' in text
    assert "avtool_clamd_up{" not in text


# ---- round trips: what the daemon writes is what the client reads ------------------------------
counter_values = st.fixed_dictionaries(
    {
        name: st.none()
        | (st.integers(0, 2**53) if kind is int else st.floats(0, 1e9, allow_nan=False))
        for name, kind in wire.COUNTERS.items()
    }
)
text = st.text(
    st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"], exclude_characters="\x85"),
    min_size=1,
    max_size=30,
)
backends = st.builds(
    Backend,
    address=text.filter(lambda t: " reachable=" not in t and " version=" not in t),
    reachable=st.booleans(),
    scans=st.integers(0, 10**9),
    errors=st.integers(0, 10**9),
    db=st.none() | st.integers(0, 10**6),
    version=st.none() | text.filter(lambda t: t != "-" and t.strip() == t),
    in_flight=st.integers(0, 1000),
    aside=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    pid=st.none() | st.integers(1, 2**22),
    socket=st.none() | text.filter(lambda t: t not in ("-", "None")),
    counters=counter_values,
    clamds=st.lists(backends, max_size=4),
)
def test_every_counter_and_clamd_line_reads_back_as_written(
    pid: int | None, socket: str | None, counters: dict[str, Any], clamds: list[Backend]
) -> None:
    written = Stats(pid, socket, counters, clamds)
    read = Stats.parse(written.lines())
    assert read == written
    for name, kind in wire.COUNTERS.items():  # typed as the table says, not as they look
        assert read.counters[name] is None or type(read.counters[name]) is kind, name


def _outcome(verdict: Any, action: policy.Action | None, code: int) -> Outcome:
    decision = None
    if action is not None:
        decision = policy.Decision(action, code, "text", "reason")
    return Outcome(Reply(code, "text"), decision, None, verdict, 100, 12.5)


class _Asked:
    """This process plays the daemon: SIGURG sets an event, as serve's handler sets a flag."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()


@pytest.fixture
def asked() -> Iterator[_Asked]:
    flag = _Asked()
    old = signal.signal(wire.STATS_SIGNAL, flag.handler)
    try:
        yield flag
    finally:
        signal.signal(wire.STATS_SIGNAL, old)


def test_the_daemon_s_stats_answer_reads_back_through_the_pipe(
    asked: _Asked, clamd_server: Any, tmp_path: Path
) -> None:
    """The daemon's own counters (daemon/stats.py) and Reloader.answer_stats, over a pipe made
    by the client's request(): every counter of wire.COUNTERS and each clamd, as counted."""
    counts = DaemonStats()
    counts.record(_outcome(Clean(), "accept", 200))
    counts.record(_outcome(Clean(), "accept", 200))
    counts.record(_outcome(Infected(("Eicar",)), "reject", 550))
    counts.record(_outcome(Infected(("Eicar",)), "quarantine", 200))
    counts.record(_outcome(Unchecked("Heuristics.Encrypted"), "pass", 200))
    counts.record(_outcome(Failed("clamd down"), "defer", 432))
    counts.record(_outcome(None, "drop", 200))  # exempt: a decision without a scan
    counts.record(_outcome(None, None, 432))  # a bad request: errors
    counts.count_timeout()
    dead = str(tmp_path / "no-clamd.sock")
    engine = Engine.from_config(make_config(str(clamd_server.unix_socket), dead))
    live, gone = engine.backends
    for _ in range(3):
        live.mark_answered()
    for _ in range(2):
        gone.mark_failed("connection refused", retry_after=600.0)  # set aside
    gone.claim()  # one scan in flight
    pipe = tmp_path / "avtool.pipe"
    daemon = SimpleNamespace(
        pipe=pipe, socket_path=tmp_path / "avtool", stats=counts,
        pipeline=SimpleNamespace(engine=engine),
    )  # fmt: skip
    reloader: Any = Reloader(daemon)
    thread = threading.Thread(target=lambda: asked.event.wait(10) and reloader.answer_stats())
    thread.start()
    try:
        response = request(Target(os.getpid(), pipe), wire.STATS_SIGNAL, 10.0, [])
    finally:
        asked.event.set()
        thread.join(20)
    assert response.end == "ok", response
    got = response.stats()
    assert (got.pid, got.socket) == (os.getpid(), str(tmp_path / "avtool"))
    assert list(got.counters) == list(wire.COUNTERS)  # every counter, in the table's order
    expected = {
        "messages": 9, "clean": 2, "infected": 2, "unchecked": 1, "failed": 1, "exempt": 1,
        "accept": 2, "pass": 1, "reject": 1, "drop": 1, "quarantine": 1, "defer": 1,
        "deferred": 3, "timeouts": 1, "errors": 1, "p50_ms": 12.5, "p99_ms": 12.5,
    }  # fmt: skip
    assert {k: v for k, v in got.counters.items() if k != "uptime_s"} == expected
    uptime = got.counters["uptime_s"]
    assert isinstance(uptime, float) and 0 <= uptime < 60
    assert sum(got.counters[k] or 0 for k in (*wire.VERDICTS, "errors", "timeouts")) == 9
    first, second = got.backends
    version = live.describe().version
    assert version is not None and " " in version  # ClamAV 1.x: it holds a space
    assert first == Backend(live.address, True, 3, 0, live.describe().db_version, version, 0, False)
    assert (second.address, second.reachable, second.errors) == (dead, False, 2)
    assert (second.in_flight, second.aside, second.db, second.version) == (1, True, None, None)
