"""What a doctor check yields: one finding per line, with its fix. A leaf, so that the package's
``run`` can import the checks and the checks this, with no import cycle."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from avtool.config import Config

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    status: Status
    what: str
    fix: str = ""


Check = Callable[[Config], Iterable[Finding]]
