"""bench/interleave.py, the rule that measures issue 18's first-pass target, against a real clamd:
the client is really stopped while each MULTISCAN slice runs, every slice is scanned once, and
the client's time is its wall time less the slices (a rule that forgot to take them out would
charge the client with MULTISCAN's time)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avtool.engine import Engine
from bench import interleave
from bench.rescan import mail
from tests.conftest import make_config
from tests.support.evasion import EICAR

# A client that runs 2.5 s of its own (250 naps of 10 ms), noting the time at each, then says
# what it found as bench/interleave.py's main does.
CLIENT = """
import json, sys, time
stamps = []
for _ in range(250):
    time.sleep(0.01)
    stamps.append(time.monotonic())
print(json.dumps({"stamps": stamps, "found": 1}))
"""


@pytest.fixture
def root() -> Iterator[Path]:
    """Three users' Maildirs, 40 messages each, and EICAR in the first (clamd's user reads them)."""
    work = Path(tempfile.mkdtemp(prefix="avi", dir="/tmp"))
    work.chmod(0o755)  # noqa: S103 - clamd's own user walks it for MULTISCAN
    try:
        mail(work / "home", 120, 3)
        virus = work / "home" / "user00" / "Maildir" / "new" / "1.eicar.bench"
        virus.write_bytes(b"Subject: x\n\n" + EICAR + b"\n")
        virus.chmod(0o644)
        yield work / "home"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_client_is_stopped_for_each_slice_and_not_charged_for_it(
    clamd_server: Any, root: Path, tmp_path: Path
) -> None:
    engine = Engine.from_config(make_config(str(clamd_server.unix_socket)))
    slices = interleave.user_slices(root)
    assert [count for _, count in slices] == [41, 40, 40]
    t0 = time.perf_counter()
    out = tmp_path / "client.out"
    result = interleave.run(
        [sys.executable, "-c", CLIENT],
        slices,
        engine,
        clamd_server.pid,
        out=out,
        messages=121,
        interval=0.2,
    )
    wall = time.perf_counter() - t0
    assert result["stops"] == 3 and result["slices_after"] == 0
    assert result["multiscan_messages"] == 121 and result["multiscan_found"] == 1
    assert result["client_found"] == 1 and result["client_exit"] == 0
    # Stopped while each slice ran: in the client's own time stamps, its three longest gaps,
    # in order, each at least as long as that slice.
    stamps = json.loads(out.read_text())["stamps"]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    longest = sorted(sorted(range(len(gaps)), key=gaps.__getitem__)[-3:])
    slices_seconds = result["slice_seconds"]
    assert isinstance(slices_seconds, list) and len(slices_seconds) == 3
    for at, seconds in zip(longest, slices_seconds, strict=True):
        assert gaps[at] >= seconds
    # Its time is the wall time less the slices (and at least its own 2.5 s).
    client = float(result["client_seconds"])  # type: ignore[arg-type]
    assert client >= 2.5
    assert client == pytest.approx(wall - float(result["multiscan_seconds"]), abs=0.05)  # type: ignore[arg-type]


def test_busy_tells_a_running_process_from_a_sleeping_one() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    nap = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.3)
        assert interleave.busy(spin.pid)
        assert not interleave.busy(nap.pid)
        started = time.monotonic()
        interleave.wait_idle(nap.pid)
        assert time.monotonic() - started < 1
    finally:
        spin.kill()
        nap.kill()
        spin.wait()
        nap.wait()
