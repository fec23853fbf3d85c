"""Doctor check: does clamd hold real signatures, and how old is its daily database?

From clamd's own VERSION (``ClamAV 1.4.6/27000/Tue Nov 24 09:23:41 2025``, or just ``ClamAV
1.4.6`` when it loaded no daily database: docs/notes/clamav.md section 2) and, when its clamd.conf
is on this machine, the files in its DatabaseDirectory: ``main`` and ``daily`` (``.cvd`` as
downloaded, ``.cld`` once freshclam patched it). A clamd with neither holds only test or custom
signatures (share/install.sh falls back to avtool's test signatures when freshclam cannot
download): it detects EICAR, so every other check passes, and no real virus.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from avtool.doctor.finding import Finding
from avtool.engine import Backend
from avtool.engine.clamdconf import ClamdConf
from avtool.engine.replies import BackendFailure, parse_version
from avtool.errors import EngineError

WARN_DAYS = 2.0  # freshclam checks 12 or 24 times a day (freshclam.conf(5) Checks)
FAIL_DAYS = 7.0
_UPDATE = (
    "run freshclam (the clamav-freshclam service keeps it current; it needs to reach "
    "database.clamav.net), then `avtool sig reload virus`"
)


def check_database(backend: Backend, conf: ClamdConf | None, now: float) -> Iterator[Finding]:
    """The database findings of one backend that answered PING. ``now``: time.time()."""
    try:
        text = backend.version()
    except EngineError as e:
        yield Finding("fail", f"clamd {backend.address} does not answer VERSION: {e}", _UPDATE)
        return
    yield from database_findings(backend.address, text, conf, now)


def database_findings(
    address: str, version: str, conf: ClamdConf | None, now: float
) -> Iterator[Finding]:
    """Findings from a VERSION answer (text without its ``\\0``) and the backend's clamd.conf."""
    try:
        v = parse_version(version.encode() + b"\0")
    except BackendFailure as e:
        yield Finding("warn", f"clamd {address}: {e.reason}: cannot tell its database")
        return
    files = _official_files(conf) if conf is not None else None
    missing = [] if files is None else [n for n in ("main", "daily") if n not in files]
    if v.db_version is None or missing:
        where = ""
        if conf is not None:
            shown = ", ".join(sorted(_all_files(conf))[:6]) or "nothing"
            where = f"; {conf.db_dir} holds {shown}"
        what = " and ".join(missing or ["daily"])
        yield Finding(
            "fail",
            f"clamd {address} holds test or custom signatures only (no {what} database; "
            f"VERSION says {version[:60]!r}{where}): it detects no real virus",
            _UPDATE,
        )
        return
    if v.db_date is None:
        yield Finding("warn", f"clamd {address}: VERSION gives no date for daily {v.db_version}")
        return
    try:
        # clamd writes the build time with ctime(3): local time, C locale
        built = time.mktime(time.strptime(v.db_date, "%a %b %d %H:%M:%S %Y"))
    except (ValueError, OverflowError):
        yield Finding("warn", f"clamd {address}: cannot read the date {v.db_date[:40]!r}")
        return
    days = (now - built) / 86400
    what = f"clamd {address}: daily database {v.db_version} of {v.db_date} is {days:.1f} days old"
    if days > FAIL_DAYS:
        yield Finding("fail", f"{what}: new viruses go undetected", _UPDATE)
    elif days > WARN_DAYS:
        yield Finding("warn", f"{what} (freshclam should update it several times a day)", _UPDATE)
    else:
        yield Finding("ok", what)


def _all_files(conf: ClamdConf) -> list[str]:
    try:
        return [e.name for e in os.scandir(conf.db_dir) if not e.name.startswith(".")]
    except OSError:
        return []


def _official_files(conf: ClamdConf) -> set[str] | None:
    """``main``/``daily`` for each such database in the dir; None if it cannot be listed."""
    try:
        names = [e.name for e in os.scandir(conf.db_dir)]
    except OSError:
        return None
    return {n.rsplit(".", 1)[0] for n in names if n.endswith((".cvd", ".cld"))}
