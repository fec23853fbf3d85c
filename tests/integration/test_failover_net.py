"""The daemon's failover and deadlines, end to end through its socket (the safety net asked for
before the engine's two state machines become one): every answer that protects mail is checked
here against a real clamd behind a fault one, so that breaking the failover or the deadline
turns a test red.

- a reply-level failure (garbage, a cut reply, a hang) of the first backend: the second, real
  clamd gives the verdict;
- a first backend that cannot be connected to: the same;
- two backends that hang: 432 at ``serve.message_timeout``, not after both ``scan_timeout``s;
- one scan slot (``serve.max_scans = 1``) held by a hanging scan: the message waiting for the
  slot gets its 432 at its own deadline.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.fakes.clamd import FakeClamd
from tests.support.clamd_harness import ClamdServer
from tests.support.serve import EICAR, Daemon, mail, start_daemon

pytestmark = pytest.mark.clamd


def serve(
    backends: list[str], *, scan_timeout: float, message_timeout: float, extra: str = ""
) -> Daemon:
    listed = ", ".join(f'"{b}"' for b in backends)
    return start_daemon(
        f"[clamd]\nbackends = [{listed}]\nscan_timeout = {scan_timeout}\nconnect_timeout = 1.0\n"
        f'retry_after = 30.0\n\n[serve]\nspool_dir = "@SPOOL@"\n'
        f"message_timeout = {message_timeout}\nread_timeout = 2.0\ndrain_timeout = 5.0\n" + extra
    )


def stopped(d: Daemon) -> None:
    if d.proc.poll() is None:
        d.stop()


@pytest.mark.parametrize("behaviour", ["garbage", "mid_reply", "hang", "reset"])
def test_loop_fails_over_after_a_reply_level_failure(
    clamd_server: ClamdServer, sockdir: Path, behaviour: str
) -> None:
    with FakeClamd(sockdir / "fault.sock", behaviour) as fault:
        d = serve(
            [fault.address, str(clamd_server.unix_socket)], scan_timeout=1.0, message_timeout=10.0
        )
        try:
            started = time.monotonic()
            assert d.filter(*d.spool.message(mail(attachment=EICAR))).startswith("550 ")
            assert time.monotonic() - started < 5.0
            assert d.filter(*d.spool.message(mail())) == "200 Ok\n"
            assert fault.connections >= 1  # the fault was really asked first
        finally:
            stopped(d)


def test_loop_fails_over_when_the_first_backend_cannot_be_reached(
    clamd_server: ClamdServer, sockdir: Path
) -> None:
    missing = sockdir / "nobody-listens.sock"
    d = serve([str(missing), str(clamd_server.unix_socket)], scan_timeout=5.0, message_timeout=10.0)
    try:
        assert d.filter(*d.spool.message(mail())) == "200 Ok\n"
        assert d.filter(*d.spool.message(mail(attachment=EICAR))).startswith("550 ")
        assert d.filter(*d.spool.message(mail())) == "200 Ok\n"
    finally:
        stopped(d)


def test_the_message_deadline_holds_across_failover(sockdir: Path) -> None:
    with FakeClamd(sockdir / "a.sock", "hang") as a, FakeClamd(sockdir / "b.sock", "hang") as b:
        d = serve([a.address, b.address], scan_timeout=1.5, message_timeout=2.0)
        try:
            started = time.monotonic()
            reply = d.filter(*d.spool.message(mail()))
            took = time.monotonic() - started
            assert reply.startswith("432 "), reply
            # Each backend alone would take 1.5 s: both in turn 3 s. The deadline is 2 s.
            assert took < 2.8, took
            assert a.connections + b.connections >= 1
        finally:
            stopped(d)


def test_a_message_waiting_for_the_only_slot_is_deferred_at_its_deadline(sockdir: Path) -> None:
    with FakeClamd(sockdir / "h.sock", "hang") as hang:
        # scan_timeout may not exceed message_timeout: the first scan holds the slot for 2 s
        d = serve([hang.address], scan_timeout=2.0, message_timeout=2.0, extra="max_scans = 1\n")
        try:
            replies: dict[str, tuple[str, float]] = {}
            started = time.monotonic()

            def send(name: str) -> None:
                reply = d.filter(*d.spool.message(mail(subject=name)))
                replies[name] = (reply, time.monotonic() - started)

            first = threading.Thread(target=send, args=("first",))
            first.start()
            deadline = time.monotonic() + 5
            while not hang.commands and time.monotonic() < deadline:
                time.sleep(0.02)  # the first scan holds the slot (the fake read its request)
            second_started = time.monotonic() - started
            send("second")
            first.join(10)
            for name in ("first", "second"):
                assert replies[name][0].startswith("432 "), (name, replies[name])
            # The slot frees at 2 s; with the wait outside its deadline the second would scan
            # until 4 s. Its own deadline is 2 s after it was sent.
            assert replies["second"][1] - second_started < 2.8, replies["second"]
        finally:
            stopped(d)
