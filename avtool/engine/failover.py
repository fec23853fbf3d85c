"""The failover rules of one message's scan, without I/O: the one machine both drivers run.

Two drivers do the talking: ``Engine.scan`` (engine.py) blocks on a plain connection per
attempt, for TCP pools, INSTREAM, SCAN and batch-test; ``PendingScan`` (pending.py) sends
FILDES on the loop's kept sessions and returns to epoll. Each tells the machine what happened
(an answer, a failure, a timeout) with the time, and the machine says what to do next: a
Backend (claimed, to try now, by ``attempt_until``; ``fresh``: on a new connection) or the
final Verdict. The rules, once:

- the order is ``Engine.choose``'s; the first backend comes claimed, each further one is
  claimed when tried; every claim is released when its attempt ends, whatever the end;
- an attempt lasts at most ``min(scan_timeout, deadline)``;
- a backend that fails (cannot connect, times out, garbles or cuts its reply, answers an ERROR
  about the command) is set aside (``Engine.set_aside``) and the next one is tried, until one
  answers or the deadline passes (then ``no_verdict``);
- a timeout once the caller's deadline has passed is ``late``: no proof against clamd, the
  backend is not set aside;
- a reused session that fails before any reply may just have been ended by clamd (its
  ReadTimeout, session.py) as it was used: the same backend goes again once, on a new
  connection, before it is blamed;
- an unreadable message (FileProblem) is Failed at once: another clamd would fare no better.
"""

from __future__ import annotations

from typing import Protocol

from avtool.engine.backend import Backend
from avtool.engine.replies import BackendFailure, FileProblem, scan_verdict
from avtool.engine.verdict import Failed, Verdict

Step = Backend | Verdict  # what to do next: try this backend, or that is the verdict


class Pool(Protocol):
    """What the machine needs of the Engine (engine.py; a protocol, so no import cycle)."""

    @property
    def scan_timeout(self) -> float: ...

    def choose(self, now: float) -> list[Backend]: ...

    def set_aside(self, backend: Backend, failure: BackendFailure, failures: list[str]) -> None: ...


class Failover:
    """One message's way through the backends; ``deadline`` (time.monotonic()) may be None."""

    __slots__ = (
        "engine", "deadline", "path", "order", "tried", "failures", "backend", "fresh",
        "attempt_until",
    )  # fmt: skip

    def __init__(
        self, engine: Pool, now: float, deadline: float | None = None, path: str | None = None
    ) -> None:
        self.engine = engine
        self.deadline = deadline
        self.path = path  # the path sent with SCAN: clamd's replies about it name it
        self.order = engine.choose(now)  # the first one is claimed
        self.tried = 0  # backends of ``order`` tried so far
        self.failures: list[str] = []  # "address: reason", for the Failed verdict
        self.backend: Backend | None = self.order[0]  # the claimed one
        self.fresh = False  # the attempt is the retry of a stale session
        self.attempt_until = 0.0

    def next(self, now: float) -> Step:
        """The next backend to try, or Failed (none left, or the deadline has passed)."""
        deadline = self.deadline
        if self.tried < len(self.order) and (deadline is None or now < deadline):
            backend = self.order[self.tried]
            self.tried += 1
            if backend is not self.backend:  # the first was claimed by choose()
                backend.claim()
                self.backend = backend
            self.fresh = False
            self._until(now)
            return backend
        self._let_go()  # the first, if the deadline passed before it was tried
        return no_verdict(self.failures, deadline is not None and now >= deadline)

    def received(self, raw: bytes, now: float) -> Step:
        """The backend replied ``raw``: its verdict, or (garbage, an ERROR about the command)
        the failover."""
        backend = self.backend
        assert backend is not None  # noqa: S101 - an attempt is in flight
        try:
            verdict = scan_verdict(raw, backend=backend.address, path=self.path)
        except BackendFailure as e:
            return self.failed(e, now)
        self._let_go()
        backend.mark_answered()
        return verdict

    def failed(self, failure: BackendFailure, now: float, *, stale: bool = False) -> Step:
        """The attempt failed; ``stale``: on a reused session, before any reply."""
        backend = self.backend
        assert backend is not None  # noqa: S101
        if stale and not self.fresh:
            self.fresh = True  # once more on a new connection, same claim
            self._until(now)
            return backend
        self._let_go()
        if failure.timeout and self.deadline is not None and now >= self.deadline:
            return late(backend)  # the caller's deadline ran out, not clamd's scan_timeout
        self.engine.set_aside(backend, failure, self.failures)
        return self.next(now)

    def timed_out(self, now: float) -> Step:
        """No answer by ``attempt_until`` (the driver has closed the connection: a late reply
        must not meet the next scan)."""
        return self.failed(
            BackendFailure("timeout: no answer from clamd in time", timeout=True), now
        )

    def unreadable(self, problem: FileProblem) -> Verdict:
        self._let_go()
        return Failed(str(problem))

    def abandon(self) -> None:
        """The driver gives up on the message: let go of the claim."""
        self._let_go()

    def _until(self, now: float) -> None:
        limit = now + self.engine.scan_timeout
        deadline = self.deadline
        self.attempt_until = limit if deadline is None else min(limit, deadline)

    def _let_go(self) -> None:
        if self.backend is not None:
            self.backend.release()
            self.backend = None


def late(backend: Backend) -> Verdict:
    """The caller's deadline passed while ``backend`` scanned: no proof against clamd."""
    return Failed(f"timeout: no verdict from clamd {backend.address} by the deadline")


def no_verdict(failures: list[str], deadline_passed: bool) -> Verdict:
    """Failed, when no backend gave a verdict: by the deadline, or every one failed."""
    if deadline_passed:
        tried = f" after {'; '.join(failures)}" if failures else ""
        return Failed(f"timeout: deadline passed{tried}")
    return Failed("all clamd backends failed: " + "; ".join(failures))
