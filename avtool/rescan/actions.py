"""What ``avtool rescan`` does with its findings besides reporting them: ``--quarantine``
(move into avtool's quarantine, origin "mailbox") and ``--notify`` (a report to the
postmaster). Built here into runner.Actions from the options."""

from __future__ import annotations

from avtool.config import Config
from avtool.errors import UsageError
from avtool.rescan.runner import Actions
from avtool.scan.scanner import Report


def build(cfg: Config, report: Report, *, quarantine: bool, notify: bool) -> Actions:
    """The hooks for these options. Not built yet: asking for them is refused (exit 2) rather
    than ignored, so that nobody believes a message was taken out when it was not."""
    del cfg, report
    for wanted, option in ((quarantine, "--quarantine"), (notify, "--notify")):
        if wanted:
            raise UsageError(f"rescan {option} is not available yet")
    return Actions()
