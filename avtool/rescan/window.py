"""The window: which delivered mail rescan looks at (``rescan.days``, ``--days``).

A Maildir or MH message's delivery time is its file's mtime (the Maildir spec: readers show
it as the date; a rename keeps it). An mbox message's is the date on its From_ line, which the
delivering agent writes in asctime(3) form, ``From sender Mon Jan  1 00:00:00 2024``, maybe
with a zone before the year (mbox(5) of qmail).
"""

from __future__ import annotations

import calendar
import re

NS = 1_000_000_000
DAY = 86400 * NS
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_ASCTIME = re.compile(
    rb" (?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +([A-Z][a-z]{2}) +(\d{1,2}) +(\d{1,2}):(\d{2})"
    rb"(?::(\d{2}))?(?: +[A-Za-z]{1,5}| +[-+]\d{4})? +(\d{4})"
)


def since(days: int, now_ns: int) -> int:
    """The window's start in ns since the epoch; 0 (everything) when ``days`` is 0."""
    return max(0, now_ns - days * DAY) if days > 0 else 0


def from_line_time(line: bytes) -> int | None:
    """The delivery time on a From_ line in ns, read as UTC (a zone shifts it by hours, not
    days); None when it carries no date in the usual form (then the message is in the window:
    scanning too much is safer than too little)."""
    found = _ASCTIME.search(line)
    if found is None:
        return None
    month = _MONTHS.get(found.group(1).decode())
    day, hour, minute = int(found.group(2)), int(found.group(3)), int(found.group(4))
    second, year = int(found.group(5) or 0), int(found.group(6))
    if month is None or not (1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        return None
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * NS
