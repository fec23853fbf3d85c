"""Scanning a file by path for tests (avtool itself always scans an open descriptor)."""

from __future__ import annotations

import os

from avtool.engine import Engine, Failed, Verdict


def scan_path(engine: Engine, path: str | os.PathLike[str]) -> Verdict:
    """Open ``path`` read-only and scan it; an OSError is a Failed verdict."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as e:
        return Failed(f"cannot open {os.fspath(path)}: {e.strerror or e}")
    try:
        return engine.scan(fd, path=os.fspath(path))
    finally:
        os.close(fd)
