"""Worker threads for what blocks, and the replies written to Courier's socket.

The loop (loop.py) hands a worker a message whose completion writes files (quarantine, drop
marks, header fields: fsync), a second look at an infected one, an early reply that must read
what the client still sends, and every message when some clamd is reached over TCP (``answer``:
the whole message the blocking way, as batch-test does). The queue is bounded: ``submit``
refuses past ``bound`` jobs queued or running, and the loop counts ``pending`` against its
connection cap, so it stops accepting before the workers fall behind (the kernel's backlog
holds the rest) and is woken by ``done`` as they catch up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable

from avtool.courier import protocol
from avtool.courier.protocol import Reply, Request
from avtool.daemon.pipeline import Pipeline
from avtool.daemon.slots import Slots, busy
from avtool.daemon.stats import Stats

log = logging.getLogger("avtool")
_DONTWAIT = socket.MSG_DONTWAIT
INTERNAL_ERROR = Reply(432, "4.3.0 avtool internal error")


class Workers:
    """``count`` threads taking jobs from a queue of at most ``bound`` jobs (queued or
    running); ``done`` is called after each job, in the worker."""

    def __init__(self, count: int, bound: int, done: Callable[[], None]) -> None:
        self.bound = bound
        self.pending = 0  # jobs submitted and not finished
        self._done = done
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; never blocks. queue.Full past the bound (the caller's cap keeps it
        from happening)."""
        with self._lock:
            if self.pending >= self.bound:
                raise queue.Full(f"{self.pending} jobs for the workers already")
            self.pending += 1
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # noqa: BLE001 - one message must never kill a worker
                log.exception("worker job failed")
            finally:
                with self._lock:
                    self.pending -= 1
                self._done()

    def stop(self, deadline: float) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def answer(
    sock: socket.socket,
    request: Request,
    deadline: float,
    pipeline: Pipeline,
    slots: Slots,
    stats: Stats,
) -> None:
    """The whole message the blocking way, in a worker thread: a scan slot within the
    message's deadline, the pipeline, the reply (the caller closes ``sock``)."""
    outcome = None
    try:
        if slots.take(deadline):
            try:
                outcome = pipeline.handle(request, deadline)
            finally:
                slots.release()
            stats.record(outcome)
            reply = outcome.reply
        else:
            reply = busy(stats, request)
    except Exception:  # noqa: BLE001 - Courier must get an answer: a bug defers the mail
        log.exception("internal error on %s", request.data_path)
        reply = INTERNAL_ERROR
    try:
        sock.settimeout(10.0)
        sock.sendall(protocol.format_reply(reply))
    except OSError as e:
        log.warning("could not reply to Courier: %s", e)
    if outcome is not None:
        pipeline.notify(outcome)  # after the reply, in threads of its own (notices.Outbox)


def send_reply(sock: socket.socket, reply: Reply) -> None:
    """The reply is a few bytes into an empty socket buffer: it does not block."""
    try:
        sock.send(protocol.format_reply(reply), _DONTWAIT)
    except OSError as e:
        log.warning("could not reply to Courier: %s", e)


def answer_early(sock: socket.socket, reply: Reply) -> None:
    """Reply before the request was read to its end, then read what the client still sends
    (bounded) before closing: closing with unread input resets the connection, which can
    destroy the reply on its way."""
    with contextlib.suppress(OSError):
        sock.settimeout(2.0)
        sock.sendall(protocol.format_reply(reply))
        sock.shutdown(socket.SHUT_WR)
        budget, until = 4 << 20, time.monotonic() + 1.0
        while budget > 0 and (left := until - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            budget -= len(chunk)
