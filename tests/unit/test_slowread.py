"""SlowReaders on socket pairs: the rest of a request, a timeout, a bad one, the limit, stop."""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Iterator

import pytest

from avtool.courier.protocol import Reply, Request, RequestReader
from avtool.slowread import SlowReaders


@pytest.fixture
def readers() -> Iterator[tuple[SlowReaders, queue.Queue[tuple[str, object]]]]:
    got: queue.Queue[tuple[str, object]] = queue.Queue()

    def finish(conn: socket.socket, request: Request, deadline: float) -> None:
        got.put(("finish", request))
        conn.close()

    def early(conn: socket.socket, reply: Reply) -> None:
        got.put(("early", reply.code))
        conn.close()

    r = SlowReaders(finish, early, limit=2)
    yield r, got
    r.stop()


def handed(r: SlowReaders, first: bytes, timeout: float = 5.0) -> socket.socket:
    """A connection whose first bytes the reader thread already has, handed over; our end."""
    ours, theirs = socket.socketpair()
    parser = RequestReader()
    parser.feed(first)
    now = time.monotonic()
    assert r.add(theirs, parser, now + timeout, now + 60)
    return ours


def test_the_rest_of_a_request_reaches_finish(readers: tuple) -> None:
    r, got = readers
    ours = handed(r, b"/spool/D1\n")
    ours.sendall(b"/spool/C1\n\n")
    assert got.get(timeout=5) == ("finish", Request("/spool/D1", ("/spool/C1",)))


def test_a_bad_rest_reaches_early_and_silence_times_out(readers: tuple) -> None:
    r, got = readers
    bad = handed(r, b"/spool/D1\n")
    bad.sendall(b"\0junk\n")
    assert got.get(timeout=5) == ("early", 500)
    idle = handed(r, b"", timeout=0.3)
    idle.settimeout(5)
    assert idle.recv(200) == b"432 4.3.0 Timeout reading the filter request\n"
    assert got.empty()


def test_the_limit_leaves_the_connection_with_the_caller(readers: tuple) -> None:
    r, _ = readers
    keep = [handed(r, b""), handed(r, b"")]
    spare, theirs = socket.socketpair()
    assert not r.add(theirs, RequestReader(), time.monotonic() + 5, time.monotonic() + 60)
    theirs.close()
    spare.close()
    del keep


def test_stop_answers_every_pending_request(readers: tuple) -> None:
    r, _ = readers
    pending = handed(r, b"/spool/D1\n", timeout=60)
    r.stop()
    pending.settimeout(5)
    assert pending.recv(200).startswith(b"432 ")
    assert not r.add(socket.socketpair()[1], RequestReader(), time.monotonic() + 5, 0.0)
