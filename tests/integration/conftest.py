"""Fixtures for tests that drive a real ``avtool serve --debug`` (tests/support/serve.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import Daemon, config_for, start_daemon


@pytest.fixture
def daemon(clamd_server: Any) -> Iterator[Daemon]:
    """A daemon on the session clamd with the default policy; stopped afterwards."""
    d = start_daemon(config_for(str(clamd_server.unix_socket)))
    yield d
    if d.proc.poll() is None:
        d.stop()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short dir below /tmp for unix sockets (their paths take 107 bytes at most)."""
    d = Path(tempfile.mkdtemp(prefix="avk", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
