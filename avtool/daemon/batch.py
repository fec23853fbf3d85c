"""Requests for ``avtool batch-test`` from a stream: the socket's framing, groups ended by a
blank line, read one line at a time (never the whole input in memory)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from avtool.courier.protocol import ProtocolError, Request, parse_request


def requests_from(stream: BinaryIO) -> Iterator[Request | ProtocolError]:
    """Each group as a Request, or the ProtocolError that says what is wrong with it."""
    group: list[bytes] = []
    for line in stream:
        if line == b"\n":
            if group:  # blank lines between groups are skipped
                yield _parse(group + [line])
                group = []
        else:  # "\r\n" too: parse_request judges it exactly as on the socket
            group.append(line if line.endswith(b"\n") else line + b"\n")
    if group:
        yield _parse(group)  # no closing blank line: reported, not guessed


def _parse(lines: list[bytes]) -> Request | ProtocolError:
    try:
        return parse_request(b"".join(lines))
    except ProtocolError as e:
        return e
