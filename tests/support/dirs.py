"""Temporary directories that other users can reach."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def public_dir(prefix: str) -> Iterator[Path]:
    """A new directory right below /tmp, mode 0755, removed afterwards. Short, since a unix
    socket path has at most 108 bytes; and clamd's user (SCAN by path) or user nobody (the
    attacks) can traverse it, which pytest's tmp_path, below 0700 dirs of root's, forbids."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)  # noqa: S103 - other users must traverse it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
