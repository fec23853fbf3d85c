"""``avtool config --check``: a doctor. Each check gives one line, and a fix when it fails."""

from __future__ import annotations

from collections.abc import Iterable

from avtool.config import Config
from avtool.doctor import clamd, courier
from avtool.doctor.finding import Check, Finding, Status

__all__ = ["Check", "Finding", "Status", "passed", "run"]


def run(cfg: Config, checks: Iterable[Check] | None = None) -> list[Finding]:
    """Every finding of every check, in order. A check that crashes is itself a failure."""
    if checks is None:
        checks = [*clamd.CHECKS, courier.check_courier]
    findings: list[Finding] = []
    for check in checks:
        try:
            findings.extend(check(cfg))
        except Exception as e:  # noqa: BLE001 - the doctor reports, it never dies
            findings.append(Finding("fail", f"{check.__name__}: crashed: {e!r}", "report a bug"))
    return findings


def passed(findings: Iterable[Finding]) -> bool:
    return all(f.status != "fail" for f in findings)
