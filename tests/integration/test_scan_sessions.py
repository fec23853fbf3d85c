"""Kept IDSESSION sessions of the scan workers (Engine.kept_sessions, issue 18): one session per
thread for many messages, and a session clamd ends mid-run costs no verdict."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.engine import Clean, Engine, Infected
from avtool.engine import engine as engine_module
from avtool.engine.session import Session
from tests.conftest import MakeConfig, make_config
from tests.support.clamd_harness import ClamdServer
from tests.support.scanning import scan_path
from tests.support.serve import EICAR, mail

pytestmark = pytest.mark.clamd


class _Counted(Session):
    """Session, counting the connections opened and whether each is an IDSESSION."""

    opened: list[bool] = []

    def __init__(self, address: str, connect_timeout: float, *, idsession: bool = True) -> None:
        super().__init__(address, connect_timeout, idsession=idsession)
        _Counted.opened.append(idsession)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    _Counted.opened = []
    monkeypatch.setattr(engine_module, "Session", _Counted)
    return _Counted.opened


@pytest.fixture
def messages(tmp_path: Path) -> tuple[Path, Path]:
    virus, clean = tmp_path / "v.eml", tmp_path / "c.eml"
    virus.write_bytes(mail(attachment=EICAR))
    clean.write_bytes(mail())
    return virus, clean


def test_one_session_per_thread_for_many_messages(
    engine_config: MakeConfig, messages: tuple[Path, Path], counted: list[bool]
) -> None:
    virus, clean = messages
    engine = Engine.from_config(engine_config())
    # The verdicts of plain connections, as before: a session must give exactly these.
    expected = {p: scan_path(engine, p) for p in (virus, clean)}
    assert isinstance(expected[virus], Infected) and isinstance(expected[clean], Clean)
    del counted[:]
    wrong: list[object] = []

    def work() -> None:
        for i in range(150):
            path = virus if i % 10 == 0 else clean
            v = scan_path(engine, path)
            if v != expected[path]:
                wrong.append(v)

    with engine.kept_sessions():
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kept = list(engine._kept_all)
        assert all(not s.closed for s in kept)
    assert wrong == []
    assert counted == [True, True, True]  # 450 messages on 3 IDSESSIONs, no plain connection
    assert all(s.closed for s in kept)  # closed at the end of the block
    scan_path(engine, clean)  # outside the block: a plain connection, as before
    assert counted[-1] is False


@pytest.fixture
def own_clamd() -> Iterator[ClamdServer]:
    """A clamd of this module's own (restarted by the test), ReadTimeout 1 s."""
    directory = Path(tempfile.mkdtemp(prefix="avt", dir="/tmp"))
    server = ClamdServer(directory, extra={"ReadTimeout": "1"}).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("how", ["restart", "read_timeout"])
def test_session_ended_by_clamd_mid_run(
    own_clamd: ClamdServer, messages: tuple[Path, Path], counted: list[bool], how: str
) -> None:
    """clamd ends the kept session between two messages (a restart; its ReadTimeout): the next
    message goes again once on a new session and gets its right verdict; the backend is not
    blamed. Red with the stale retry removed (the message is Failed)."""
    virus, clean = messages
    real = str(own_clamd.unix_socket)
    cfg = make_config(real, connect_timeout=1.0, scan_timeout=20.0, retry_after=30.0)
    engine = Engine.from_config(cfg)
    infected = scan_path(engine, virus)
    assert isinstance(infected, Infected) and infected.backend == real
    del counted[:]
    with engine.kept_sessions():
        assert scan_path(engine, clean) == Clean(real)
        assert scan_path(engine, virus) == infected
        if how == "restart":
            own_clamd.stop()
            own_clamd.start()
        else:
            time.sleep(3.0)  # clamd: COMMAND READ TIMED OUT, and the session is closed
        assert scan_path(engine, virus) == infected
        assert scan_path(engine, clean) == Clean(real)
        assert scan_path(engine, virus) == infected
    backend = engine.backends[0]
    assert not backend.set_aside() and backend.errors == 0
    assert counted == [True, True]  # one session, then one new one after clamd ended it
