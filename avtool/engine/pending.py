"""One message's scan without blocking: the daemon's loop (avtool/daemon/loop.py) drives it.

The loop's driver of the failover machine (failover.py, the rules shared with ``Engine.scan``):
FILDES over a kept-open session of each backend in turn (engine/session.py). Each step returns
the verdict, or None while ``session`` waits for clamd; the loop watches ``session`` (it may
change at any step) and calls ``receive`` when it is readable, ``timeout`` when
``attempt_until`` passes.
"""

from __future__ import annotations

import time

from avtool.engine.backend import Backend
from avtool.engine.engine import Engine
from avtool.engine.failover import Failover, Step
from avtool.engine.replies import BackendFailure
from avtool.engine.session import Session
from avtool.engine.verdict import Verdict


class PendingScan:
    """The scan of the open data file ``fd``, within ``deadline`` (time.monotonic(); None:
    each attempt within clamd.scan_timeout, as ``Engine.scan``)."""

    __slots__ = ("run", "fd", "session", "started")

    def __init__(self, engine: Engine, fd: int, deadline: float | None, now: float) -> None:
        self.run = Failover(engine, now, deadline)
        self.fd = fd
        self.session: Session | None = None  # waiting for clamd's answer
        self.started = now

    @property
    def attempt_until(self) -> float:
        return self.run.attempt_until

    def start(self, now: float) -> Verdict | None:
        """Send the message to the first backend that takes it: None once a session waits,
        else the Failed verdict (no backend left, or the deadline passed)."""
        return self._go(self.run.next(now), now)

    def receive(self, now: float) -> Verdict | None:
        """``session`` is readable: the verdict, or None (more to come, or the scan went on to
        another session)."""
        session = self.session
        assert session is not None  # noqa: S101 - start() set it
        try:
            raw = session.receive()
        except BackendFailure as e:
            self.session = None
            session.close()
            return self._go(self.run.failed(e, now, stale=session.stale), now)
        if raw is None:
            return None
        self.session = None
        step = self.run.received(raw, now)
        if isinstance(step, Backend):  # garbage, or an ERROR about the command
            session.close()
            return self._go(step, now)
        assert session.pool is not None  # noqa: S101 - sessions here come from a pool
        session.pool.give_back(session, now)
        return step

    def timeout(self, now: float) -> Verdict | None:
        """No answer by ``attempt_until``: the session is closed (a late reply must not meet
        the next scan); past the message's deadline Failed, else the next backend."""
        session = self.session
        assert session is not None  # noqa: S101
        self.session = None
        session.close()
        return self._go(self.run.timed_out(now), now)

    def abandon(self) -> None:
        """Let go of the session and the claim (the loop gives up on the message)."""
        if self.session is not None:
            self.session.close()
            self.session = None
        self.run.abandon()

    def _go(self, step: Step, now: float) -> Verdict | None:
        """Send FILDES to each backend the machine names until one takes it (None: the
        session waits), or the machine's verdict. An idle session of the backend's pool is
        used, or a new one when the machine asks for ``fresh``."""
        while isinstance(step, Backend):
            pool = step.sessions
            try:
                session = pool.connect() if self.run.fresh else pool.take(now)
            except BackendFailure as e:
                now = time.monotonic()
                step = self.run.failed(e, now)
                continue
            try:
                session.send_fildes(self.fd)
            except BackendFailure as e:
                session.close()
                now = time.monotonic()
                step = self.run.failed(e, now, stale=session.reused)
                continue
            self.session = session
            return None
        return step
