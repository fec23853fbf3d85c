"""Shared fixtures, kept generic: one real clamd for the session, and Configs pointing at it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from avtool.config import Config
from tests.support.clamd_harness import ClamdServer

# No per-example deadline: on a 2-core machine shared with clamd and Courier an example can
# take longer than hypothesis' 200 ms for no fault of the code; the tests that bound a cost
# measure it themselves.
settings.register_profile("avtool", deadline=None)
settings.load_profile("avtool")

# Short keys for engine_config(): the clamd.* keys, and scan.max_size as max_size.
_SHORT = {"max_size": "scan.max_size"}


@pytest.fixture(scope="session")
def clamd_server() -> Iterator[ClamdServer]:
    """A real clamd (tests/support/clamd_harness.py) with the test signatures, StreamMaxLength 10M.

    Its dir is short (unix socket paths are limited to 108 bytes) and removed afterwards.
    """
    directory = Path(tempfile.mkdtemp(prefix="avt", dir="/tmp"))
    server = ClamdServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


MakeConfig = Callable[..., Config]


def make_config(*backends: str, **values: object) -> Config:
    """A Config (no file, no environment) for ``backends`` with other values as overrides.

    Keys are dotted (``**{"clamd.transfer": "scan"}``) or short for the clamd section
    (``transfer="scan"``, ``scan_timeout=0.5``; ``max_size`` is scan.max_size).
    """
    overrides = {"clamd.backends": ",".join(backends)} if backends else {}
    for name, value in values.items():
        if "." not in name:
            name = _SHORT.get(name, f"clamd.{name}")
        overrides[name] = ",".join(value) if isinstance(value, list | tuple) else str(value)
    return Config.resolve(env={}, overrides=overrides)


@pytest.fixture
def engine_config(clamd_server: ClamdServer) -> MakeConfig:
    """``engine_config(*backends, **values)``: a Config for the session clamd (its unix socket
    unless ``backends`` are given), with short timeouts."""

    def make(*backends: str, **values: object) -> Config:
        scan_timeout = float(values.get("scan_timeout", 20.0))  # type: ignore[arg-type]
        defaults: dict[str, object] = {
            "connect_timeout": min(1.0, scan_timeout),  # must not exceed scan_timeout
            "scan_timeout": scan_timeout,
            "retry_after": 30.0,
        }
        return make_config(*(backends or (str(clamd_server.unix_socket),)), **(defaults | values))

    return make


@pytest.fixture(scope="session", autouse=True)
def _remove_daemon_dirs() -> Iterator[None]:
    """Daemons started by tests/support/serve.py leave temp dirs: remove them."""
    yield
    from tests.support.serve import cleanup_all

    cleanup_all()


@pytest.fixture(autouse=True)
def _no_machine_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads this machine's config: not /etc/courier/filters/avtool.conf (written by
    share/install.sh, and the e2e tests run here), not the user's file, not an AVTOOL_*
    variable of the shell that runs pytest. A test that wants one of them sets it itself."""
    from avtool import config as C

    nowhere = tmp_path_factory.mktemp("noconfig")
    monkeypatch.setattr(C, "SYSTEM_CONFIG", nowhere / "system.conf")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(nowhere / "xdg"))
    for name in list(os.environ):
        if name.startswith("AVTOOL_") and not name.startswith("AVTOOL_E2E_"):
            monkeypatch.delenv(name)
