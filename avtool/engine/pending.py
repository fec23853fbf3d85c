"""One message's scan without blocking: the daemon's loop (avtool/daemon/loop.py) drives it.

The same rules as ``Engine.scan``, cut at each wait for clamd: the engine's order (the first
backend claimed by ``Engine.choose``), FILDES over a kept-open session of each backend in turn
(engine/session.py), a failed backend set aside (``Engine.set_aside``) and the next one tried,
until one answers or the message's deadline passes. Each step returns the verdict, or None
while ``session`` waits for clamd; the loop watches ``session`` (it may change at any step)
and calls ``receive`` when it is readable, ``timeout`` when ``attempt_until`` passes.

A reused session that fails may just have been ended by clamd (its ReadTimeout) as it was
used: the scan goes again once on a new connection before the backend is blamed.
"""

from __future__ import annotations

import time

from avtool.engine.backend import Backend
from avtool.engine.engine import Engine, late, no_verdict
from avtool.engine.replies import BackendFailure, scan_verdict
from avtool.engine.session import Session
from avtool.engine.verdict import Verdict


class PendingScan:
    """The scan of the open data file ``fd``, within ``deadline`` (time.monotonic())."""

    __slots__ = (
        "engine", "fd", "deadline", "order", "tried", "failures", "backend", "session",
        "started", "attempt_until",
    )  # fmt: skip

    def __init__(self, engine: Engine, fd: int, deadline: float, now: float) -> None:
        self.engine = engine
        self.fd = fd
        self.deadline = deadline
        self.order = engine.choose(now)  # the first one is claimed
        self.tried = 0  # backends of ``order`` tried so far
        self.failures: list[str] = []
        self.backend: Backend | None = None  # claimed: a scan in flight there
        self.session: Session | None = None  # waiting for clamd's answer
        self.started = now
        self.attempt_until = 0.0

    def start(self, now: float) -> Verdict | None:
        """Send the message to the next backend that takes it: None once a session waits,
        else the Failed verdict (no backend left, or the deadline passed)."""
        claimed = self.tried == 0  # by choose()
        while self.tried < len(self.order) and now < self.deadline:
            backend = self.order[self.tried]
            self.tried += 1
            if not claimed:
                backend.claim()
            claimed = False
            try:
                self._wait_on(backend, _send(backend, self.fd, now, fresh=False), now)
                return None
            except BackendFailure as e:
                self._failed(backend, e)
                now = time.monotonic()
        if claimed:
            self.order[0].release()  # the deadline passed before the first try
        return no_verdict(self.failures, time.monotonic() >= self.deadline)

    def receive(self, now: float) -> Verdict | None:
        """``session`` is readable: the verdict, or None (more to come, or the scan went on to
        another session)."""
        session, backend = self.session, self.backend
        assert session is not None and backend is not None  # noqa: S101 - start() set them
        try:
            raw = session.receive()
            if raw is None:
                return None
            verdict = scan_verdict(raw, backend=backend.address)
        except BackendFailure as e:
            self.session = None
            session.close()
            failure = e
            if session.reused and session.sent == session.answered + 1:
                try:  # clamd ended the idle session just as it was used: once more, new
                    self._wait_on(backend, _send(backend, self.fd, now, fresh=True), now)
                    return None
                except BackendFailure as again:
                    failure = again
            self._failed(backend, failure)
            return self.start(now)
        self.session = None
        backend.sessions.give_back(session, now)
        self.backend = None
        backend.release()
        backend.mark_answered()
        return verdict

    def timeout(self, now: float) -> Verdict | None:
        """No answer by ``attempt_until``: the session is closed (a late reply must not meet
        the next scan); past the message's deadline Failed, else the next backend."""
        session, backend = self.session, self.backend
        assert session is not None and backend is not None  # noqa: S101
        self.session = None
        session.close()
        if now >= self.deadline:
            self.backend = None
            backend.release()
            return late(backend)
        self._failed(backend, BackendFailure("timeout: no answer from clamd in time", timeout=True))
        return self.start(now)

    def abandon(self) -> None:
        """Let go of the session and the claim (the loop gives up on the message)."""
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.backend is not None:
            self.backend.release()
            self.backend = None

    def _wait_on(self, backend: Backend, session: Session, now: float) -> None:
        self.backend, self.session = backend, session
        self.attempt_until = min(now + self.engine.scan_timeout, self.deadline)

    def _failed(self, backend: Backend, failure: BackendFailure) -> None:
        self.backend = None
        backend.release()
        self.engine.set_aside(backend, failure, self.failures)


def _send(backend: Backend, fd: int, now: float, *, fresh: bool) -> Session:
    """FILDES on a session of ``backend``: an idle one, or (``fresh``, or when the idle one
    turns out ended by clamd) a new one. BackendFailure when clamd cannot be reached."""
    pool = backend.sessions
    session = pool.connect() if fresh else pool.take(now)
    try:
        session.send_fildes(fd)
    except BackendFailure:
        session.close()
        if not session.reused:
            raise
        session = pool.connect()  # clamd ended the idle session (ReadTimeout): once more
        try:
            session.send_fildes(fd)
        except BackendFailure:
            session.close()
            raise
    return session
