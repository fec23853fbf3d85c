"""The daemon's counters as ``avtool sig stats`` reads them: parsed from its SIGURG answer
(reload.Reloader.answer_stats: ``name value`` lines, then one ``clamd ADDRESS k=v ...`` line per
backend), typed, and formatted for JSON or Prometheus' text exposition format."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Backend:
    address: str
    reachable: bool
    scans: int
    errors: int
    db: int | None
    version: str | None
    in_flight: int = 0  # scans sent and not yet answered
    aside: bool = False  # set aside after a failure (retry_after): tried last


@dataclasses.dataclass(frozen=True)
class Stats:
    """The daemon's answer to SIGURG (reload.Reloader.answer_stats), typed."""

    pid: int | None
    socket: str | None
    counters: dict[str, int | float | None]
    backends: list[Backend] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """Flat, for --json: pid, socket, every counter, then ``clamd``: one object each."""
        out: dict[str, object] = {"pid": self.pid, "socket": self.socket}
        out.update(self.counters)
        out["clamd"] = [dataclasses.asdict(b) for b in self.backends]
        return out


def parse_stats(lines: tuple[str, ...] | list[str]) -> Stats:
    """``name value`` lines (``-`` for none) and ``clamd ADDRESS k=v ... version=TEXT`` lines."""
    pid: int | None = None
    socket: str | None = None
    counters: dict[str, int | float | None] = {}
    backends: list[Backend] = []
    for line in lines:
        name, _, rest = line.partition(" ")
        if name == "clamd":
            backends.append(_backend(rest))
        elif name == "pid":
            pid = int(rest) if rest.isdigit() else None
        elif name == "socket":
            socket = None if rest in ("-", "None") else rest
        elif name:
            counters[name] = _number(rest)
    return Stats(pid, socket, counters, backends)


def _backend(rest: str) -> Backend:
    rest, _, version = rest.partition(" version=")  # the last field: it holds spaces
    address, *pairs = rest.split(" ")
    fields = dict(pair.partition("=")[::2] for pair in pairs)
    db = fields.get("db", "")
    return Backend(
        address=address,
        reachable=fields.get("reachable") == "yes",
        scans=int(fields.get("scans", "0") or 0),
        errors=int(fields.get("errors", "0") or 0),
        db=int(db) if db.isdigit() else None,
        version=None if version in ("", "-") else version,
        in_flight=int(fields.get("in_flight", "0") or 0),
        aside=fields.get("aside") == "yes",
    )


def _number(text: str) -> int | float | None:
    if text == "-":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


# Prometheus text exposition format (node_exporter's textfile collector). Each message is
# counted under exactly one verdict, so the verdict series add up to ``messages``.
VERDICT_LABELS = {
    "clean": "clean",
    "infected": "infected",
    "unchecked": "unchecked",
    "failed": "failed",
    "exempt": "exempt",
    "errors": "error",  # a bad request or control file: answered without a scan
    "timeouts": "timeout",  # no scan slot within serve.message_timeout
}
ACTIONS = ("accept", "pass", "reject", "drop", "quarantine", "defer")


def prometheus(stats: Stats) -> str:
    c = stats.counters
    out: list[str] = []

    def family(name: str, kind: str, doc: str, samples: list[tuple[str, object]]) -> None:
        out.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}"])
        out.extend(f"{name}{labels} {_value(v)}" for labels, v in samples)

    family(
        "avtool_messages_total",
        "counter",
        "Messages answered since the daemon started, by verdict.",
        [(f'{{verdict="{label}"}}', c.get(key, 0)) for key, label in VERDICT_LABELS.items()],
    )
    family(
        "avtool_actions_total",
        "counter",
        "Policy actions taken since the daemon started.",
        [(f'{{action="{a}"}}', c.get(a, 0)) for a in ACTIONS],
    )
    family(
        "avtool_deferred_total",
        "counter",
        "Messages answered with a 4xx (try again later).",
        [("", c.get("deferred", 0))],
    )
    family(
        "avtool_scan_ms",
        "gauge",
        "Scan time of recent messages in milliseconds, by quantile.",
        [('{quantile="0.5"}', c.get("p50_ms")), ('{quantile="0.99"}', c.get("p99_ms"))],
    )
    per = [(f'{{backend="{_label(b.address)}"}}', b) for b in stats.backends]
    family(
        "avtool_clamd_up",
        "gauge",
        "1 if the clamd answered VERSION.",
        [(lb, int(b.reachable)) for lb, b in per],
    )
    family(
        "avtool_clamd_scans_total",
        "counter",
        "Scans sent to each clamd.",
        [(lb, b.scans) for lb, b in per],
    )
    family(
        "avtool_clamd_errors_total",
        "counter",
        "Connection, timeout and protocol failures per clamd.",
        [(lb, b.errors) for lb, b in per],
    )
    family(
        "avtool_clamd_in_flight",
        "gauge",
        "Scans sent to each clamd and not yet answered.",
        [(lb, b.in_flight) for lb, b in per],
    )
    family(
        "avtool_clamd_set_aside",
        "gauge",
        "1 if the clamd is set aside after a failure (tried only when the others fail).",
        [(lb, int(b.aside)) for lb, b in per],
    )
    family(
        "avtool_clamd_db_version",
        "gauge",
        "Version of the daily database each clamd has loaded (absent when unknown).",
        [(lb, b.db) for lb, b in per if b.db is not None],
    )
    family(
        "avtool_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        [("", c.get("uptime_s", 0))],
    )
    return "\n".join(out) + "\n"


def _value(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    return str(v)


def _label(text: str) -> str:
    """A label value: backslash, double quote and newline escaped (the exposition format)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
