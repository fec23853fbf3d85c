"""A fault clamd first, the real clamd second: failover gives the real verdict."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from avtool.engine import Clean, Engine, Infected
from tests.conftest import MakeConfig
from tests.fakes.clamd import FakeClamd
from tests.support.clamd_harness import ClamdServer
from tests.support.scanning import scan_path
from tests.support.serve import EICAR, mail

pytestmark = pytest.mark.clamd


@pytest.mark.parametrize("behaviour", ["hang", "garbage", "mid_reply", "reset"])
def test_fault_first_then_real_clamd(
    engine_config: MakeConfig,
    clamd_server: ClamdServer,
    sockdir: Path,
    tmp_path: Path,
    behaviour: str,
) -> None:
    real = str(clamd_server.unix_socket)
    virus, clean = tmp_path / "v.eml", tmp_path / "c.eml"
    virus.write_bytes(mail(attachment=EICAR))
    clean.write_bytes(mail())
    with FakeClamd(sockdir / "fake.sock", behaviour) as fake:
        cfg = engine_config(fake.address, real, scan_timeout=0.5, retry_after=0.5)
        e = Engine.from_config(cfg)
        started = time.monotonic()
        v = scan_path(e, virus)
        assert isinstance(v, Infected) and v.backend == real
        assert time.monotonic() - started < 2.0  # a hang costs at most scan_timeout
        assert fake.connections == 1 and e.backends[0].set_aside()
        for _ in range(3):
            assert scan_path(e, clean) == Clean(real)
        assert fake.connections == 1  # set aside: not contacted again
        time.sleep(0.55)
        assert scan_path(e, clean) == Clean(real)
        assert fake.connections == 2  # retry_after passed: tried (and failed) again
        assert [b.errors for b in e.backends] == [2, 0]
        assert [b.scans for b in e.backends] == [0, 5]
