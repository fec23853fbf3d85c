"""What a scan can end in. Every engine call returns one of these; none raises for a scan outcome.

- ``Clean``: clamd scanned it and found nothing.
- ``Infected``: clamd named one or more signatures.
- ``Unchecked``: clamd could not look at all of it (too large, its limits, an encrypted archive).
  Not a virus verdict: policy gives it an action of its own.
- ``Failed``: no answer to trust (clamd unreachable, timeout, protocol error). Policy defers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clean:
    backend: str = ""


@dataclass(frozen=True, slots=True)
class Infected:
    names: tuple[str, ...]
    backend: str = ""


@dataclass(frozen=True, slots=True)
class Unchecked:
    reason: str
    backend: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    backend: str = ""


Verdict = Clean | Infected | Unchecked | Failed
