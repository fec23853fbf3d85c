"""The scan slots: ``serve.max_scans`` scans at once, for both ways a message is scanned.

The event loop (loop.py) takes a slot without ever blocking (``try_take``; a message without
one waits in the loop's FIFO, woken by ``on_free`` when a worker gives one back); a worker
thread serving a message the blocking way (workers.answer: some clamd reached over TCP) waits
for one (``take``) until the message's deadline. Either way, past the deadline the answer is
``busy``: one reply and one log line, counted as a timeout.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from avtool.config import Config
from avtool.config import keys as K
from avtool.courier.protocol import Reply, Request
from avtool.daemon.stats import Stats

log = logging.getLogger("avtool")
BUSY = Reply(432, "4.3.2 Virus scanner busy, try again later")


def scan_slots(cfg: Config) -> int:
    """``serve.max_scans``; 0 means twice the CPUs (clamd's threads wait on disk, too)."""
    return cfg[K.MAX_SCANS] or 2 * (os.cpu_count() or 1)


def busy(stats: Stats, request: Request) -> Reply:
    """No slot within ``serve.message_timeout``: counted, logged, deferred."""
    stats.count_timeout()
    log.warning("no scan slot within serve.message_timeout: %s", request.data_path)
    return BUSY


def _nothing() -> None:
    pass


class Slots:
    """``size`` slots shared by the loop and the worker threads (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiters = 0  # worker threads in take(): only then is a release notified
        self._cond = threading.Condition(threading.Lock())
        # Called after a worker gives a slot back: the loop, whose waiting messages only it
        # may start, sets it to wake itself.
        self.on_free: Callable[[], None] = _nothing

    def try_take(self) -> bool:
        """A slot if one is free now (the loop: it never waits)."""
        with self._cond:
            if self.used < self.size:
                self.used += 1
                return True
            return False

    def take(self, deadline: float) -> bool:
        """A slot, waiting for one until ``deadline`` (time.monotonic); False past it."""
        with self._cond:
            while self.used >= self.size:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._waiters += 1
                try:
                    self._cond.wait(left)
                finally:
                    self._waiters -= 1
            self.used += 1
            return True

    def release(self, *, wake: bool = True) -> None:
        """Give a slot back. ``wake=False`` from the loop itself: it starts its waiting
        messages right after, no need to be woken."""
        with self._cond:
            self.used -= 1
            if self._waiters:
                self._cond.notify()
        if wake:
            self.on_free()
