"""batch-test reads the socket's framing: each group must mean exactly what the same bytes mean
on the filter socket (courier/protocol.py), CRLF and stray blank lines included."""

from __future__ import annotations

import io

import pytest

from avtool.courier.protocol import ProtocolError, Request, parse_request
from avtool.daemon.batch import requests_from


def on_the_socket(raw: bytes) -> Request | str:
    try:
        return parse_request(raw)
    except ProtocolError as e:
        return f"error: {e}"


def in_batch(raw: bytes) -> list[Request | str]:
    return [r if isinstance(r, Request) else f"error: {r}" for r in requests_from(io.BytesIO(raw))]


@pytest.mark.parametrize(
    "raw",
    [
        b"/var/lib/courier/tmp/1/D1\n/var/lib/courier/tmp/1/C1\n\n",
        b"/var/lib/courier/tmp/1/D1\r\n/var/lib/courier/tmp/1/C1\r\n\r\n\n",
        b"/var/lib/courier/tmp/1/D1\n/var/lib/courier/tmp/1/C1\r\n\n",
        b"/var/lib/courier/tmp/1/D1\n/var/lib/courier/tmp/1/C1\n\r\n\n",  # CRLF blank line
        b"relative/D1\n/var/lib/courier/tmp/1/C1\n\n",
        b"/var/lib/courier/tmp/1/D1\n\n",
    ],
)
def test_a_group_means_what_it_means_on_the_socket(raw: bytes) -> None:
    assert in_batch(raw) == [on_the_socket(raw)]


def test_groups_and_blank_lines_between_them() -> None:
    one = b"/var/lib/courier/tmp/1/D1\n/var/lib/courier/tmp/1/C1\n\n"
    two = b"/var/lib/courier/tmp/2/D2\n/var/lib/courier/tmp/2/C2\n\n"
    assert in_batch(b"\n" + one + b"\n\n" + two) == [on_the_socket(one), on_the_socket(two)]
