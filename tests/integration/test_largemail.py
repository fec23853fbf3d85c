"""A 30 MB message by INSTREAM to a TCP clamd through ``avtool serve``: streamed, not held.

bench/largemail.py does 50 and 200 MB by FILDES and INSTREAM; this is its CI-sized part. The
daemon's peak RSS (VmHWM) may not grow by anything near the message's size, and an EICAR
attachment placed after 30 MB of base64 is found: clamd received the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.largemail import daemon_config, write_mail
from bench.serve import proc_hwm_mb
from tests.support.clamd_harness import ClamdServer
from tests.support.dirs import public_dir
from tests.support.serve import start_daemon

SIZE = 30 << 20


@pytest.fixture(scope="module")
def big_clamd() -> Iterator[ClamdServer]:
    """clamd whose StreamMaxLength and MaxFileSize take 30 MB (the session clamd takes 10M)."""
    with public_dir("avg") as directory:
        server = ClamdServer(directory, stream_max="40M", extra={"MaxFileSize": "40M"})
        try:
            yield server.start()
        finally:
            server.stop()


def test_30mb_instream_is_streamed_with_bounded_memory(big_clamd: ClamdServer) -> None:
    daemon = start_daemon(daemon_config(big_clamd.tcp_address))  # TCP: INSTREAM (auto)
    try:
        pid = daemon.proc.pid
        replies, growth = [], []
        for eicar in (False, True):
            data, ctls = daemon.spool.message(b"")
            assert write_mail(data, SIZE, eicar=eicar) > SIZE - (3 << 20)
            before = proc_hwm_mb(pid)
            replies.append(daemon.filter(data, ctls).strip())
            growth.append(proc_hwm_mb(pid) - before)
            data.unlink()
        assert replies[0].startswith("200 ")
        assert replies[1].startswith("550 ") and "Eicar" in replies[1]
        assert max(growth) < 10.0, growth  # MB; a whole copy would be 30
    finally:
        assert daemon.stop(60) == 0
