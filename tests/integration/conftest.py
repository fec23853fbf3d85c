"""Fixtures for tests that drive a real ``avtool serve --debug`` (serve_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.serve_support import Daemon, config_for, start_daemon


@pytest.fixture
def daemon(clamd_server: Any) -> Iterator[Daemon]:
    """A daemon on the session clamd with the default policy; stopped afterwards."""
    d = start_daemon(config_for(str(clamd_server.unix_socket)))
    yield d
    if d.proc.poll() is None:
        d.stop()
