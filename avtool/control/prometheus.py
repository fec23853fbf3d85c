"""The daemon's counters (wire.Stats, the answer to ``avtool sig stats``) in Prometheus' text
exposition format, for node_exporter's textfile collector; and the last rescan's facts."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping

from avtool.control.wire import ACTIONS, VERDICTS, Backend, Stats

# Each message is counted under exactly one verdict, so the verdict series add up to
# ``messages`` (wire.VERDICTS).
VERDICT_LABELS = {
    **{verdict: verdict for verdict in VERDICTS},
    "errors": "error",  # a bad request or control file: answered without a scan
    "timeouts": "timeout",  # no scan slot within serve.message_timeout
}
Samples = list[tuple[str, object]]  # (labels, value)
# One family per clamd field: name, type, help, value (None: no sample for that clamd).
PER_CLAMD: tuple[tuple[str, str, str, Callable[[Backend], int | None]], ...] = (
    ("avtool_clamd_up", "gauge", "1 if the clamd answered VERSION.", lambda b: int(b.reachable)),
    ("avtool_clamd_scans_total", "counter", "Scans sent to each clamd.", lambda b: b.scans),
    (
        "avtool_clamd_errors_total",
        "counter",
        "Connection, timeout and protocol failures per clamd.",
        lambda b: b.errors,
    ),
    (
        "avtool_clamd_in_flight",
        "gauge",
        "Scans sent to each clamd and not yet answered.",
        lambda b: b.in_flight,
    ),
    (
        "avtool_clamd_set_aside",
        "gauge",
        "1 if the clamd is set aside after a failure (tried only when the others fail).",
        lambda b: int(b.aside),
    ),
    (
        "avtool_clamd_db_version",
        "gauge",
        "Version of the daily database each clamd has loaded (absent when unknown).",
        lambda b: b.db,
    ),
)


def prometheus(stats: Stats) -> str:
    c = stats.counters
    out: list[str] = []

    def family(name: str, kind: str, doc: str, samples: Samples) -> None:
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
    for name, kind, doc, value in PER_CLAMD:
        family(name, kind, doc, [(lb, v) for lb, b in per if (v := value(b)) is not None])
    family(
        "avtool_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        [("", c.get("uptime_s", 0))],
    )
    return "\n".join(out) + "\n"


def rescan_prometheus(facts: Mapping[str, object]) -> str:
    """The last ``avtool rescan`` (its summary, rescan/last.py): when it ended and what it
    found; nothing before the first rescan."""
    when = facts.get("last_rescan")
    if not isinstance(when, str):
        return ""
    try:
        stamp = datetime.datetime.fromisoformat(when).timestamp()
    except ValueError:
        return ""
    families = (
        ("avtool_rescan_last_timestamp_seconds", "When the last rescan ended (Unix time).", stamp),
        (
            "avtool_rescan_last_scanned",
            "Messages the last rescan scanned.",
            facts.get("last_rescan_scanned"),
        ),
        (
            "avtool_rescan_last_infected",
            "Infected messages the last rescan found.",
            facts.get("last_rescan_infected"),
        ),
    )
    out = []
    for name, doc, value in families:
        out += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {_value(value)}"]
    return "\n".join(out) + "\n"


def _value(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    return str(v)


def _label(text: str) -> str:
    """A label value: backslash, double quote and newline escaped (the exposition format)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
