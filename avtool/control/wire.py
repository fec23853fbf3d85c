"""What ``avtool sig`` and the daemon say to each other: the one definition of each message.

Plain text lines, never pickle (design.md, anti-patterns). The client sends a signal
(``RELOAD_SIGNALS``, ``STATS_SIGNAL``); the daemon writes its answer as lines into the answers
pipe (fifo.py), then one last line ``END ok`` or ``END error``. The counters answer is
``Stats.lines()`` on the daemon's side and ``Stats.parse()`` on the client's, both here, so that
a counter or a ``clamd`` field cannot be written one way and read another (tests/unit/
test_wire.py round-trips both). How a request ends gives ``avtool sig``'s exit status
(``EXIT``, and the errors below: its --help, "Exit status").
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterable
from typing import Literal

from avtool.errors import AvtoolError


# ---- the requests: one signal each --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reload:
    """What a reload signal asks the daemon to reload."""

    config: bool
    virus: bool


RELOAD_SIGNALS: dict[signal.Signals, Reload] = {
    signal.SIGHUP: Reload(config=True, virus=True),  # both, as avfilter_sig without argument
    signal.SIGUSR1: Reload(config=True, virus=False),
    signal.SIGUSR2: Reload(config=False, virus=True),
}
STATS_SIGNAL = signal.SIGURG  # ignored by default: harmless when sent to a wrong pid
RELOAD_WHAT = (None, "config", "virus")  # avtool sig reload [config|virus]


def reload_signal(what: str | None) -> signal.Signals:
    """The signal for ``reload`` (None: config and virus database), ``reload config`` or
    ``reload virus``."""
    if what not in RELOAD_WHAT:
        raise ValueError(f"reload what: {what!r}")
    want = Reload(config=what != "virus", virus=what != "config")
    return next(s for s, asked in RELOAD_SIGNALS.items() if asked == want)


# ---- the answer: lines, then END ----------------------------------------------------------------
END_OK = "END ok"
END_ERROR = "END error"

End = Literal["ok", "error", "eof", "timeout", "gone"]
# avtool sig's exit status: 0 ok; 1 the daemon reported an error (or cut its answer short);
# 2 usage; 3 not running; 4 another request in progress; 5 no answer within the timeout.
EXIT: dict[End, int] = {"ok": 0, "error": 1, "eof": 1, "timeout": 5, "gone": 3}


class SigError(AvtoolError):
    """A request that could not be made; ``exit_code`` is the documented status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotRunning(SigError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 3)


class Busy(SigError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 4)


@dataclasses.dataclass(frozen=True)
class Response:
    """What the daemon wrote, and how the answer ended: ``ok``/``error`` (its END line), ``eof``
    (closed without END), ``timeout``, or ``gone`` (the process ended while we waited)."""

    lines: tuple[str, ...]
    end: End

    @property
    def exit_code(self) -> int:
        return EXIT[self.end]

    def problem(self, pid: int, timeout: float) -> str | None:
        """One line for the user when the answer is not complete, else None."""
        if self.end == "eof":
            return f"process {pid} closed the pipe before its END line: answer incomplete"
        if self.end == "timeout":
            return f"no answer from process {pid} within {timeout:g} s"
        if self.end == "gone":
            return f"the filter is not running: process {pid} ended before answering"
        return None

    def stats(self) -> Stats:
        """The lines as the answer to ``STATS_SIGNAL``."""
        return Stats.parse(self.lines)


# ---- the counters (the answer to STATS_SIGNAL) --------------------------------------------------
# Each message is counted under exactly one verdict (or errors, or timeouts): they add up to
# ``messages``. Each decision under its action (``accept``: a clean message).
VERDICTS = ("clean", "infected", "unchecked", "failed", "exempt")
ACTIONS = ("accept", "pass", "reject", "drop", "quarantine", "defer")
Value = int | float | None  # None: none yet (a percentile of no scan), "-" on the wire
COUNTERS: dict[str, type[int] | type[float]] = {
    "messages": int,
    **dict.fromkeys(VERDICTS, int),
    **dict.fromkeys(ACTIONS, int),
    "deferred": int,  # answered with a 4xx
    "timeouts": int,  # no scan slot within serve.message_timeout
    "errors": int,  # a bad request or control file: answered without a scan
    "p50_ms": float,  # scan time of recent messages
    "p99_ms": float,
    "uptime_s": float,
}


@dataclasses.dataclass(frozen=True)
class Backend:
    """One clamd as the daemon sees it: ``clamd ADDRESS reachable=yes|no scans=N errors=N
    in_flight=N aside=yes|no db=N|unknown version=TEXT|-`` (version last: it holds spaces)."""

    address: str
    reachable: bool
    scans: int
    errors: int
    db: int | None
    version: str | None
    in_flight: int = 0  # scans sent and not yet answered
    aside: bool = False  # set aside after a failure (retry_after): tried last

    def line(self) -> str:
        return (
            f"clamd {self.address} reachable={_yes(self.reachable)} scans={self.scans} "
            f"errors={self.errors} in_flight={self.in_flight} aside={_yes(self.aside)} "
            f"db={'unknown' if self.db is None else self.db} version={self.version or '-'}"
        )

    @classmethod
    def parse(cls, rest: str) -> Backend:
        """``rest``: the line after ``clamd ``. Fields an older daemon did not write take their
        defaults; the address ends where ``reachable=`` starts (it may hold spaces)."""
        rest, _, version = rest.partition(" version=")
        address, _, rest = rest.partition(" reachable=")
        fields = dict(pair.partition("=")[::2] for pair in f"reachable={rest}".split(" "))
        db = fields.get("db", "")
        return cls(
            address=address,
            reachable=fields.get("reachable") == "yes",
            scans=_int(fields.get("scans")),
            errors=_int(fields.get("errors")),
            db=int(db) if db.isdigit() else None,
            version=None if version in ("", "-") else version,
            in_flight=_int(fields.get("in_flight")),
            aside=fields.get("aside") == "yes",
        )


@dataclasses.dataclass(frozen=True)
class Stats:
    """The daemon's answer to ``STATS_SIGNAL``: ``pid N``, ``socket PATH|-``, one ``NAME VALUE``
    line per counter (``-`` for none), then one ``clamd`` line per backend."""

    pid: int | None
    socket: str | None
    counters: dict[str, Value]
    backends: list[Backend] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"pid {'-' if self.pid is None else self.pid}", f"socket {self.socket or '-'}"]
        out += [f"{name} {'-' if v is None else v}" for name, v in self.counters.items()]
        return out + [b.line() for b in self.backends]

    @classmethod
    def parse(cls, lines: Iterable[str]) -> Stats:
        """Counters typed as ``COUNTERS`` says; a name it does not know (a newer daemon's) as
        the number it looks like."""
        pid: int | None = None
        socket: str | None = None
        counters: dict[str, Value] = {}
        backends: list[Backend] = []
        for line in lines:
            name, _, rest = line.partition(" ")
            if name == "clamd":
                backends.append(Backend.parse(rest))
            elif name == "pid":
                pid = int(rest) if rest.isdigit() else None
            elif name == "socket":
                socket = None if rest in ("-", "None") else rest
            elif name:
                counters[name] = _number(rest, COUNTERS.get(name))
        return cls(pid, socket, counters, backends)

    def as_dict(self) -> dict[str, object]:
        """Flat, for --json: pid, socket, every counter, then ``clamd``: one object each."""
        out: dict[str, object] = {"pid": self.pid, "socket": self.socket}
        out.update(self.counters)
        out["clamd"] = [dataclasses.asdict(b) for b in self.backends]
        return out


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def _number(text: str, kind: type[int] | type[float] | None) -> Value:
    for convert in (kind,) if kind is not None else (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return None
