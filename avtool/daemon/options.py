"""How the daemon was started (``avtool serve``'s options), kept for its config reloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Options:
    """How the daemon was started; kept so that a config reload resolves the same way."""

    name: str = "avtool"
    debug: bool = False
    fd3: bool = False  # was fd 3 open when the process started (courierfilter's pipe)?
    socket_dir: Path | None = None
    config_path: Path | None = None
    overrides: dict[str, str] = field(default_factory=dict)
