"""One clamd address: its client, its commands, its counters and whether it is set aside."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from avtool.engine import session
from avtool.engine.replies import BackendFailure, parse_version, reply_text
from avtool.engine.session import SessionPool
from avtool.errors import EngineError

if TYPE_CHECKING:
    from avtool.engine.client import TcpClient, UnixClient

Mode = Literal["fildes", "instream", "scan"]
_MODES: dict[str, Mode] = {"fildes": "fildes", "instream": "instream", "scan": "scan"}

# PING, VERSION, RELOAD and STATS are answered at once from clamd's receive thread (clamd/
# session.c, execute_or_dispatch_command; RELOAD took 0.2 ms, notes 2): a hung clamd must not
# hold `avtool config -v` or the daemon's start for the whole scan timeout.
COMMAND_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What ``describe()`` learnt: never raised, ``error`` says why it is not ``reachable``."""

    address: str
    reachable: bool
    version: str | None = None  # "ClamAV 1.4.6" (the part before any "/")
    engine_version: str | None = None  # "1.4.6"
    db_version: int | None = None  # daily database version; None without daily.cvd (notes 2)
    db_date: str | None = None
    error: str | None = None


class Backend:
    """One clamd address, as configured: ``/path/to/clamd.sock`` or ``host:port``.

    The client holds no socket, so a Backend is shared by every thread. Counters and the
    set-aside state change under a lock.
    """

    def __init__(
        self, address: str, *, connect_timeout: float = 2.0, scan_timeout: float = 120.0
    ) -> None:
        self.address = address
        self.is_unix = address.startswith("/")
        self._client: UnixClient | TcpClient | None = None
        self.connect_timeout = connect_timeout
        # FILDES sessions kept open by the daemon's loop (a unix socket only; loop thread only)
        self.sessions = SessionPool(address, connect_timeout)
        self.command_timeout = min(scan_timeout, COMMAND_TIMEOUT)
        self._lock = threading.Lock()
        self.scans = 0  # scans this backend answered
        self.errors = 0  # connection, timeout and protocol failures
        self.last_error: str | None = None
        self.failed_at: float | None = None  # time.monotonic() of the last failure
        self.in_flight = 0  # scans sent and not yet answered or failed (balance least-busy)
        self._aside_until = 0.0

    def __repr__(self) -> str:
        return f"Backend({self.address!r})"

    @property
    def client(self) -> UnixClient | TcpClient:
        """The ``clamd`` package's client for this address (client.py), made on first use:
        importing that package costs ~100 ms (its pkg_resources), at every start of every
        command, while avtool's own commands need only session.py."""
        if self._client is None:
            from avtool.engine.client import TcpClient, UnixClient

            self._client = (
                UnixClient(self.address, self.connect_timeout)
                if self.is_unix
                else TcpClient(self.address, self.connect_timeout)
            )
        return self._client

    # ---- health -------------------------------------------------------------------------------
    def set_aside(self, now: float | None = None) -> bool:
        """True while a recent failure keeps this backend out of the normal rotation."""
        return (time.monotonic() if now is None else now) < self._aside_until

    def mark_failed(self, reason: str, retry_after: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self.last_error = reason
            self.failed_at = now
            self._aside_until = now + retry_after

    def mark_answered(self) -> None:
        with self._lock:
            self.scans += 1
            self._aside_until = 0.0

    # ---- load -----------------------------------------------------------------------------------
    def claim(self) -> None:
        """One more scan in flight here; every claim() is paired with a release()."""
        with self._lock:
            self.in_flight += 1

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # ---- scanning -------------------------------------------------------------------------------
    def mode_for(self, transfer: str) -> Mode:
        """``auto``: FILDES on a unix socket, INSTREAM over TCP (FILDES is unix-only, notes 2)."""
        if transfer == "auto":
            return "fildes" if self.is_unix else "instream"
        try:
            return _MODES[transfer]
        except KeyError:
            raise ValueError(f"unknown transfer {transfer!r}") from None

    # ---- commands ---------------------------------------------------------------------------
    def _command(self, cmd: str) -> bytes:
        try:
            deadline = time.monotonic() + self.command_timeout
            return session.command(self.address, self.connect_timeout, cmd, deadline)
        except BackendFailure as e:
            raise EngineError(e.reason) from None

    def _text(self, cmd: str) -> str:
        try:
            return reply_text(self._command(cmd))
        except BackendFailure as e:
            raise EngineError(e.reason) from None

    def ping(self) -> None:
        """Raise EngineError with the reason unless clamd answers PONG."""
        text = self._text("PING")
        if text != "PONG":
            raise EngineError(f"unexpected reply to PING: {text[:80]!r}")

    def version(self) -> str:
        """VERSION as clamd says it: ``ClamAV 1.4.6`` or ``ClamAV 1.4.6/27000/<date>``."""
        return self._text("VERSION")

    def reload(self) -> str:
        """RELOAD: clamd answers ``RELOADING`` at once and loads in the background (notes 2)."""
        text = self._text("RELOAD")
        if text != "RELOADING":
            raise EngineError(f"unexpected reply to RELOAD: {text[:80]!r}")
        return text

    def stats(self) -> str:
        """STATS as clamd writes it (pools, threads, queue, memory; ends with ``END``)."""
        return self._text("STATS")

    def describe(self) -> BackendInfo:
        """Reachable, version and database; never raises."""
        try:
            v = parse_version(self._command("VERSION"))
        except (EngineError, BackendFailure) as e:
            return BackendInfo(self.address, False, error=str(e))
        return BackendInfo(self.address, True, v.product, v.engine, v.db_version, v.db_date)
