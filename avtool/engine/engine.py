"""The engine: one message, one verdict, on the first clamd backend that answers."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import select
import threading
import time
from collections.abc import Iterator, Sequence

from avtool.config import Config
from avtool.config import keys as K
from avtool.engine.backend import Backend, Mode
from avtool.engine.failover import Failover
from avtool.engine.replies import SIZE_LIMIT, BackendFailure, FileProblem
from avtool.engine.session import IDLE_MAX, Session, command, left
from avtool.engine.verdict import Failed, Unchecked, Verdict

log = logging.getLogger("avtool.engine")

BALANCES = ("ordered", "round-robin", "least-busy")


class Engine:
    """Scans messages on a list of clamd backends; safe to share between threads.

    Failover: a backend that fails (cannot connect, times out, garbles or cuts its reply,
    answers an ERROR about the command) is set aside for ``retry_after`` seconds and the next
    one is tried, until one answers or the deadline passes. An ERROR about the *file* (SCAN:
    access denied, no such file) is clamd's answer, not a failure: Failed at once, no failover,
    because another clamd would see the same file. Set-aside backends are still tried, oldest
    failure first, once every healthy one has failed: better a late verdict than none.

    Balance, the first backend tried: ``ordered``, the first healthy one as configured;
    ``round-robin``, each healthy one in turn; ``least-busy``, the healthy one with the fewest
    scans in flight from this engine (ties in turn), so a slow or distant clamd gets fewer.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        balance: str = "ordered",
        transfer: str = "auto",
        max_size: int = 25 << 20,
        scan_timeout: float = 120.0,
        retry_after: float = 30.0,
    ) -> None:
        if not backends:
            raise ValueError("an Engine needs at least one backend")
        if balance not in BALANCES:
            raise ValueError(f"unknown balance {balance!r}")
        for backend in backends:
            backend.mode_for(transfer)  # ValueError now rather than at the first scan
        self._backends = tuple(backends)
        self.balance = balance
        self.transfer = transfer
        self.max_size = max_size
        self.scan_timeout = scan_timeout
        self.retry_after = retry_after
        # Every backend takes FILDES: the daemon's loop scans without a thread (loop.py).
        self.fildes_only = all(b.mode_for(transfer) == "fildes" for b in self._backends)
        self._turn = itertools.count()
        self._turn_lock = threading.Lock()
        # The first choice and counting the scan on it happen under one lock: two threads must
        # not both see the same idle backend (least-busy).
        self._choose_lock = threading.Lock()
        # FILDES sessions kept per thread while ``kept_sessions`` is on (keep_sessions docstring)
        self._kept: _Kept | None = None
        self._kept_all: set[Session] = set()
        self._kept_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Config) -> Engine:
        backends = [
            Backend(a, connect_timeout=cfg[K.CONNECT_TIMEOUT], scan_timeout=cfg[K.SCAN_TIMEOUT])
            for a in cfg[K.BACKENDS]
        ]
        return cls(
            backends,
            balance=cfg[K.BALANCE],
            transfer=cfg[K.TRANSFER],
            max_size=cfg[K.MAX_SIZE],
            scan_timeout=cfg[K.SCAN_TIMEOUT],
            retry_after=cfg[K.RETRY_AFTER],
        )

    @property
    def backends(self) -> list[Backend]:
        return list(self._backends)

    def scan(self, fd: int, *, path: str | None = None, deadline: float | None = None) -> Verdict:
        """Scan the open file ``fd``; never raises for a scan outcome.

        ``path`` (absolute) is needed only for transfer ``scan``. ``deadline`` is a
        ``time.monotonic()`` instant bounding the whole call, failover included. A file over
        scan.max_size is Unchecked without contacting clamd. The caller's file offset is left
        as it was: INSTREAM reads at explicit offsets, and FILDES puts back the offset that
        clamd's shared copy of the descriptor resets (measured: 10 before, 0 after).

        The blocking driver of the failover machine (failover.py): one plain connection per
        attempt, waited on with poll until the attempt's end; within ``kept_sessions``, FILDES
        to a unix socket goes over this thread's kept IDSESSION instead.
        """
        try:
            size = os.fstat(fd).st_size
        except OSError as e:
            return Failed(f"cannot stat the message: {e.strerror or e}")
        if size > self.max_size:
            return self.too_large(size)
        if self.transfer == "scan":
            if path is None:
                return Failed("clamd.transfer is scan, but the message has no path")
            path = os.path.abspath(path)  # clamd does not resolve relative paths (notes 2)
        else:
            path = None
        try:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            offset = -1  # not seekable: nothing to restore
        run = Failover(self, time.monotonic(), deadline, path)
        kept = self._kept
        try:
            step = run.next(time.monotonic())
            while isinstance(step, Backend):
                mode = step.mode_for(self.transfer)
                try:
                    if kept is not None and mode == "fildes" and step.is_unix:
                        raw = self._kept_attempt(kept, step, fd, run.attempt_until, run.fresh)
                    else:
                        raw = attempt(step, mode, fd, size, path, run.attempt_until)
                except FileProblem as e:
                    return run.unreadable(e)
                except BackendFailure as e:
                    stale = isinstance(e, _StaleSession)
                    step = run.failed(e, time.monotonic(), stale=stale)
                    continue
                tried, step = step, run.received(raw, time.monotonic())
                if kept is not None and isinstance(step, Backend):
                    # garbage, or an ERROR about the command: the session goes, as in the loop
                    self._drop(kept, tried)
            return step
        finally:
            run.abandon()  # nothing left to let go of, unless an exception came through
            if offset >= 0:
                with contextlib.suppress(OSError):
                    os.lseek(fd, offset, os.SEEK_SET)

    @contextlib.contextmanager
    def kept_sessions(self) -> Iterator[None]:
        """While in the block, FILDES scans on unix-socket backends (``scan``) go over an
        IDSESSION kept open per thread and backend, as the daemon's loop does (session.py):
        per message no connect, accept and close, and clamd spends less CPU on a session's
        command than on a plain FILDES connection (issue 18: ``avtool scan``/``rescan`` of many
        small messages). The rules are the failover machine's, as for the loop: a kept session
        that fails before its reply (clamd ended it: ReadTimeout, a restart) goes again once on
        a new one before the backend is blamed; a session that failed or timed out is closed
        (a late reply must not meet the next scan); one idle IDLE_MAX is closed before clamd
        would. At the end every kept session is closed. For worker pools (scanner.py), not for
        the daemon, whose loop keeps its own (pending.py)."""
        self._kept = _Kept()
        try:
            yield
        finally:
            self._kept = None
            with self._kept_lock:
                left_open, self._kept_all = self._kept_all, set()
            for session in left_open:
                session.close()

    def _kept_attempt(
        self, kept: _Kept, backend: Backend, fd: int, until: float, fresh: bool
    ) -> bytes:
        """FILDES on this thread's kept session of ``backend`` (a new one when there is none,
        it idled IDLE_MAX, or the machine asks for ``fresh``): the raw reply, or BackendFailure
        (_StaleSession when the session was reused and failed before its reply)."""
        now = time.monotonic()
        session = kept.sessions.pop(backend.address, None)
        if session is not None and (fresh or now - session.idle_since >= IDLE_MAX):
            self._forget(session)
            session = None
        if session is None:
            session = Session(backend.address, min(backend.connect_timeout, left(until)))
            with self._kept_lock:
                self._kept_all.add(session)
        try:
            session.send_fildes(fd)
            raw = _wait(session, until)
        except BackendFailure as e:
            self._forget(session)
            if session.reused and not e.timeout:
                raise _StaleSession(e.reason) from None
            raise
        session.reused = True
        session.idle_since = time.monotonic()
        kept.sessions[backend.address] = session
        return raw

    def _drop(self, kept: _Kept, backend: Backend) -> None:
        session = kept.sessions.pop(backend.address, None)
        if session is not None:
            self._forget(session)

    def _forget(self, session: Session) -> None:
        session.close()
        with self._kept_lock:
            self._kept_all.discard(session)

    def set_aside(self, backend: Backend, failure: BackendFailure, failures: list[str]) -> None:
        """``backend`` failed a scan: out of the rotation for retry_after, logged, and noted in
        ``failures`` (the reason of the Failed verdict if no backend answers)."""
        backend.mark_failed(failure.reason, self.retry_after)
        log.warning(
            "clamd %s failed, set aside for %g s: %s",
            backend.address,
            self.retry_after,
            failure.reason,
        )
        failures.append(f"{backend.address}: {failure.reason}")

    def too_large(self, size: int) -> Verdict:
        return Unchecked(f"too large: {size} bytes > scan.max_size {self.max_size}")

    def choose(self, now: float) -> list[Backend]:
        """The backends to try, in order (``_order``), with one scan counted in flight on the
        first: the caller releases it, and claims and releases each further one it tries."""
        with self._choose_lock:
            order = self._order(now)
            order[0].claim()
        return order

    def _order(self, now: float) -> list[Backend]:
        """Backends to try, in order: healthy ones (rotated for round-robin and least-busy,
        then for least-busy fewest in flight first), then the set-aside ones, oldest failure
        first."""
        backends = self._backends
        if self.balance != "ordered" and len(backends) > 1:
            with self._turn_lock:  # itertools.count is not atomic across threads
                start = next(self._turn) % len(backends)
            backends = backends[start:] + backends[:start]
        healthy = [b for b in backends if not b.set_aside(now)]
        if self.balance == "least-busy":
            healthy.sort(key=lambda b: b.in_flight)  # stable: ties keep their turn
        if len(healthy) == len(backends):
            return healthy  # the usual case
        aside = sorted((b for b in backends if b.set_aside(now)), key=lambda b: b.failed_at or 0.0)
        return healthy + aside


@contextlib.contextmanager
def kept_sessions(*engines: Engine) -> Iterator[None]:
    """``Engine.kept_sessions`` on each of ``engines`` (the same one named twice, once)."""
    with contextlib.ExitStack() as stack:
        for engine in dict.fromkeys(engines):
            stack.enter_context(engine.kept_sessions())
        yield


class _Kept(threading.local):
    """One thread's kept sessions, by backend address."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}


class _StaleSession(BackendFailure):
    """A kept session, used before, failed before its reply: clamd may just have ended it."""


def attempt(
    backend: Backend, mode: Mode, fd: int, size: int, path: str | None, until: float
) -> bytes:
    """One attempt on ``backend``, by ``until``: connect, send the message the ``mode`` way,
    wait for the reply with poll. The raw reply; BackendFailure, or FileProblem (INSTREAM could
    not read the message)."""
    if mode == "fildes" and not backend.is_unix:
        raise BackendFailure("FILDES needs a unix socket")
    session = Session(backend.address, min(backend.connect_timeout, left(until)), idsession=False)
    try:
        if mode == "fildes":
            session.send_fildes(fd)
        elif mode == "instream":
            session.send_instream(fd, size, until)
        else:
            session.send_command(f"SCAN {path}", until)
        try:
            return _wait(session, until)
        except BackendFailure:
            if not session.cut or session.heard:
                raise
    finally:
        session.close()
    # clamd hung up on the stream and no reply survived: its size limit, or a dead clamd.
    # PING tells them apart: answered means it was the size limit (notes 2, pitfall 5).
    try:
        command(backend.address, backend.connect_timeout, "PING", until)
    except BackendFailure as e:
        raise BackendFailure(f"connection lost while streaming; then {e.reason}") from None
    return SIZE_LIMIT.encode() + b". ERROR\0"


def _wait(session: Session, until: float) -> bytes:
    """The reply on ``session``, waited for with poll (not a socket timeout: the session's
    socket is non-blocking, as in the loop, and ``receive`` is the same code)."""
    poller = select.poll()
    poller.register(session.fd, select.POLLIN)
    while True:
        rest = until - time.monotonic()
        if rest <= 0:
            raise BackendFailure(
                "timeout: no answer from clamd while waiting for the verdict", timeout=True
            )
        if poller.poll(math.ceil(rest * 1000)):
            raw = session.receive()
            if raw is not None:
                return raw
