"""The one scan limiter (daemon/slots.py), shared by the event loop and the worker threads."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from avtool.courier.protocol import Request
from avtool.daemon.slots import BUSY, Slots, busy
from avtool.daemon.stats import Stats


def test_the_loop_and_a_worker_share_the_slots() -> None:
    slots = Slots(2)
    assert slots.try_take() and slots.take(time.monotonic() + 1)  # the loop's, a worker's
    assert not slots.try_take()
    started = time.monotonic()
    assert not slots.take(started + 0.2)  # a worker waits until its deadline, no longer
    assert 0.15 < time.monotonic() - started < 2.0
    slots.release(wake=False)
    assert slots.try_take()


def test_a_slot_given_back_wakes_a_waiting_worker_and_tells_the_loop() -> None:
    slots = Slots(1)
    freed: list[str] = []
    slots.on_free = lambda: freed.append("free")
    assert slots.try_take()
    got: list[bool] = []
    worker = threading.Thread(target=lambda: got.append(slots.take(time.monotonic() + 5)))
    worker.start()
    time.sleep(0.1)
    slots.release()  # a worker's release: the loop is told (it may have messages waiting)
    worker.join(5)
    assert got == [True] and freed == ["free"]
    slots.release(wake=False)  # the loop's own: no wake-up
    assert freed == ["free"] and slots.used == 0


def test_busy_is_one_reply_one_line_one_count(caplog: pytest.LogCaptureFixture) -> None:
    stats = Stats()
    with caplog.at_level(logging.WARNING, logger="avtool"):
        assert busy(stats, Request("/spool/D1", ("/spool/C1",))) is BUSY
    assert BUSY.code == 432
    assert caplog.messages == ["no scan slot within serve.message_timeout: /spool/D1"]
    assert stats.snapshot()["timeouts"] == 1
