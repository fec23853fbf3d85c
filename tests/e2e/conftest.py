"""Fixtures for the real-Courier tests: one ``courier.sh up`` per session, a reset per test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.e2e import harness


@pytest.fixture(scope="session")
def courier_session() -> Iterator[float]:
    """Courier installed, configured and running; yields how long ``up`` took (seconds).
    Skips when this machine cannot run it (harness.unavailable). Stops Courier afterwards
    unless AVTOOL_E2E_KEEP=1."""
    reason = harness.unavailable()
    if reason is not None:
        pytest.skip(f"e2e: {reason}")
    with harness.exclusive():
        started = time.monotonic()
        harness.courier("up")
        took = time.monotonic() - started
        try:
            yield took
        finally:
            harness.courier("reset")
            if os.environ.get("AVTOOL_E2E_KEEP") != "1":
                harness.courier("down")


@pytest.fixture
def courier(courier_session: float) -> Iterator[None]:
    """A clean Courier for one test: no active filter, empty queue and Maildir."""
    harness.courier("reset")
    yield
