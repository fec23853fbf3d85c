"""The event loop's connections (loop.py): one object per stage, and their timers.

A connection still sending its request is a ``Reader``; once the request is read and the
message prepared, a ``Conn``: WAITING for a scan slot, SCANNING, JUDGING (its slot given back),
DONE (answered, or handed to a worker that answers it). Each has a ``gen``: a timer set for it
is valid only while the gen it was set with is unchanged, so moving on voids its timers
without searching the heap.
"""

from __future__ import annotations

import heapq
import socket
from collections.abc import Iterator

from avtool.config import keys as K
from avtool.courier.protocol import Request, RequestReader
from avtool.daemon.pipeline import Pipeline, Prepared
from avtool.engine.pending import PendingScan

COMPACT_AT = 4096  # timers kept before the void ones are swept out

# What a Conn is doing; a timer is valid only while the gen of its Reader or Conn is unchanged.
WAITING, SCANNING, JUDGING, DONE = range(4)


class Reader:
    """A connection still sending its request."""

    __slots__ = ("sock", "fd", "gen", "parser", "accepted", "deadline")

    def __init__(self, sock: socket.socket, now: float, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.gen = 0
        self.parser = RequestReader()
        self.accepted = now
        self.deadline = deadline  # serve.message_timeout from the accept


class Conn:
    """A message prepared for its scan (or judged without one) and, while it is scanned, its
    clamd session."""

    __slots__ = (
        "sock", "fd", "state", "gen", "deadline", "request", "pipeline", "dry_run", "prepared",
        "scan",
    )  # fmt: skip

    def __init__(self, reader: Reader, request: Request, pipeline: Pipeline, p: Prepared) -> None:
        self.sock = reader.sock
        self.fd = reader.fd
        self.state = JUDGING
        self.gen = reader.gen + 1  # the reader's timers are void
        self.deadline = reader.deadline
        self.request = request
        self.pipeline = pipeline
        self.dry_run: bool = pipeline.cfg[K.DRY_RUN]
        self.prepared = p
        self.scan: PendingScan | None = None


class Timers:
    """A heap of (when, seq, gen, connection); the void ones are skipped, and swept out when
    they pile up (most are: a scan answers long before scan_timeout)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Reader | Conn]] = []
        self.seq = 0

    def set(self, conn: Reader | Conn, when: float, held: int) -> None:
        """A timer for ``conn`` (voiding its others); ``held``: connections alive now."""
        conn.gen += 1
        self.seq += 1
        heap = self.heap
        heapq.heappush(heap, (when, self.seq, conn.gen, conn))
        if len(heap) > COMPACT_AT and len(heap) > 4 * held:
            heap[:] = [t for t in heap if t[2] == t[3].gen]
            heapq.heapify(heap)

    def next_in(self, now: float) -> float:
        """Seconds until the next valid timer, -1.0 when there is none."""
        heap = self.heap
        while heap and heap[0][2] != heap[0][3].gen:
            heapq.heappop(heap)  # stale: the connection moved on
        return max(0.0, heap[0][0] - now) if heap else -1.0

    def due(self, now: float) -> Iterator[Reader | Conn]:
        """The connections whose valid timer is due, each taken off the heap."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, gen, conn = heapq.heappop(heap)
            if gen == conn.gen:
                yield conn
