"""One message's scan for ``avtool scan`` and ``rescan``, in three steps that the two drivers
(driver.py) share: ``open`` (the message's file, never following a name its owner controls),
the verdict (the thread pool: ``Engine.scan``; the loop: ``PendingScan`` on what ``payload``
gives), and ``examine`` (what a report needs besides the verdict). ``scan`` runs all three,
blocking, on a pool thread.

How a message reaches clamd: a file (Maildir, MH, loose file) is opened and passed by
descriptor, as the daemon does. An mbox message is a byte range of a bigger file: it is copied
by the kernel (sendfile) into an anonymous memory file (memfd_create(2)), which is passed the
same way; bench/scan.py measured this against INSTREAM of the range (see its output).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from avtool.config import Config
from avtool.config import keys as K
from avtool.courier import unscannable
from avtool.engine import Clean, Engine, Failed, Infected, Unchecked, Verdict, secondlook
from avtool.safedir import Unsafe
from avtool.scan.explain import Part, explain
from avtool.scan.mailbox import Message, Problem
from avtool.scan.mailbox.maildir import copy_range, relocate
from avtool.scan.mailbox.mbox import digest
from avtool.scan.mailbox.message import read_head, sender_and_subject
from avtool.scan.mailbox.opener import Opener
from avtool.scan.mailbox.walk import why

log = logging.getLogger("avtool.scan")

Status = Literal["clean", "infected", "unchecked", "failed"]
UNSCANNABLE_HEAD = 1 << 16
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Result:
    message: Message
    verdict: Verdict
    sender: str | None = None
    subject: str | None = None
    parts: tuple[Part, ...] | None = None  # --explain, infected messages only
    digest: str = ""  # mbox messages to move: SHA-256 of the bytes scanned

    @property
    def status(self) -> Status:
        v = self.verdict
        if isinstance(v, Clean):
            return "clean"
        if isinstance(v, Infected):
            return "infected"
        return "unchecked" if isinstance(v, Unchecked) else "failed"


@dataclass(frozen=True)
class Options:
    jobs: int = 0  # 0: scan.jobs, and if that is 0 too, default_jobs()
    explain: bool = False
    move_to: str | None = None
    count: bool = False  # count messages and bytes first, in the background (a progress total)
    headers: bool = False  # From and Subject for clean messages too (non-clean ones always)


@dataclass(slots=True)
class Opened:
    """A message open for its scan: ``fd`` holds it from ``base`` on (an mbox message: the
    mbox's own descriptor, which is the walk's and stays open; else the message's file, ours
    to close), ``size`` its bytes."""

    message: Message
    fd: int
    base: int
    size: int
    owned: bool
    memfd: int = -1  # an mbox message's copy, sent to clamd (payload)

    def close(self) -> None:
        mem, self.memfd = self.memfd, -1
        owned, self.owned = self.owned, False
        try:
            if mem >= 0:
                os.close(mem)
            if owned:
                os.close(self.fd)
        except OSError:
            pass


class Worker:
    """Scans messages. ``looped``: every clamd takes FILDES on a unix socket, so the scan is
    driven by one thread (driver.py), which opens messages faster than threads sharing it."""

    def __init__(self, cfg: Config, engine: Engine, options: Options, *, moving: bool) -> None:
        self.engine = engine
        self.looped = engine.fildes_only
        self.opener = Opener(shared=not self.looped)  # Maildir, MH: by their folders' fds
        # transfer "scan" needs a path clamd can open; a byte range has none, so ranges go by
        # FILDES (INSTREAM over TCP) whatever clamd.transfer says.
        self.range_engine = (
            engine
            if engine.transfer != "scan"
            else Engine.from_config(cfg.override(K.TRANSFER, "auto"))
        )
        self.explain = options.explain
        self.headers = options.headers
        self.moving = moving

    def scan(self, m: Message) -> Result | Problem:
        """The three steps, blocking (a pool thread)."""
        opened = self.guard(m, lambda: self.open(m))
        if not isinstance(opened, Opened):
            return opened
        try:
            return self.guard(m, lambda: self.examine(opened, self._verdict(opened)))
        finally:
            opened.close()

    @staticmethod
    def guard(m: Message, step: Callable[[], T]) -> T | Result:
        """``step()`` for message ``m``, or the Failed result of what it raised: a bug too is
        one Failed line and exit 2, never a lost message."""
        try:
            return step()
        except OSError as e:
            return Result(m, Failed(f"cannot read the message: {why(e)}"))
        except Exception as e:
            log.debug("scanning %s", m.where, exc_info=True)
            return Result(m, Failed(f"internal error: {type(e).__name__}: {e}"))

    def open(self, m: Message) -> Opened | Result | Problem:
        if m.source is not None:
            return Opened(m, m.source.fd, m.offset, m.size, owned=False)
        # Through the folder's descriptor (opener.py): the mailbox's owner may swap a folder for
        # a link (to /dev, where an open alone has effects) between the listing and this open.
        # Non-blocking: a message swapped for a fifo must not hang the scan in open(2) (fifo(7)).
        try:
            try:
                fd = self.opener.open(m)
            except FileNotFoundError:
                again = relocate(m) if m.format == "maildir" else None
                if again is None:
                    text = "gone before it was scanned (deleted meanwhile)"
                    return Problem(m.where, text, False)
                m = again
                fd = self.opener.open(m)
        except OSError as e:
            return Result(m, Failed(f"cannot open: {why(e)}"))
        except Unsafe as e:
            return Result(m, Failed(f"not opened: {e}"))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return Result(m, Failed("not a regular file any more (replaced meanwhile)"))
        except BaseException:
            os.close(fd)
            raise
        # What a move may act on: this inode, the one scanned (quarantine.py).
        if (m.dev, m.ino) != (st.st_dev, st.st_ino):  # replace() costs 25 us a message
            m = replace(m, dev=st.st_dev, ino=st.st_ino)
        return Opened(m, fd, 0, st.st_size, owned=True)

    def payload(self, opened: Opened) -> int | Verdict:
        """What clamd is sent by FILDES (the loop): the file itself, or an mbox message's copy;
        or the verdict without clamd (too large)."""
        m = opened.message
        if opened.size > self.engine.max_size:  # do not copy what clamd will not be sent
            return self.engine.too_large(opened.size)
        if m.source is None or (opened.base == 0 and m.size == os.fstat(opened.fd).st_size):
            return opened.fd  # a file, or stdin holding one message: the spool itself
        opened.memfd = mem = os.memfd_create("avtool-message", os.MFD_CLOEXEC)
        copy_range(opened.fd, mem, opened.base, m.size)
        return mem

    def _verdict(self, opened: Opened) -> Verdict:
        m, fd = opened.message, opened.fd
        if m.source is None:
            return self.engine.scan(fd, path=m.path)
        sent = self.payload(opened)
        return self.range_engine.scan(sent) if isinstance(sent, int) else sent

    def examine(self, opened: Opened, verdict: Verdict) -> Result:
        m, fd, base = opened.message, opened.fd, opened.base
        if isinstance(verdict, Clean):
            # clamd answers OK without looking at some messages (courier/unscannable.py)
            try:
                head = os.pread(fd, min(m.size, UNSCANNABLE_HEAD), base)
                unseen = unscannable.find(fd, m.size, head, base)
            except OSError:
                unseen = None
            if unseen is not None:
                verdict = Unchecked(unseen, verdict.backend)
        sender = subject = None
        if self.headers or not isinstance(verdict, Clean):
            # On a read error the verdict stands; the report just lacks the fields.
            with contextlib.suppress(OSError):
                sender, subject = sender_and_subject(read_head(fd, base, m.size))
        parts = None
        mark = ""
        if isinstance(verdict, Infected):
            if self.explain:
                parts = explain(_pread_all(fd, base, m.size), self.scan_bytes)
            if self.moving and m.format == "mbox":
                mark = digest(fd, base, m.size)
        return Result(m, verdict, sender, subject, parts, mark)

    def scan_bytes(self, data: bytes) -> Verdict:
        """One decoded MIME part, for --explain."""
        return secondlook.scan_bytes(self.range_engine, data)

    def close(self) -> None:
        self.opener.close()


def _pread_all(fd: int, offset: int, size: int) -> bytes:
    chunks = []
    end = offset + size
    while offset < end:
        data = os.pread(fd, end - offset, offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
    return b"".join(chunks)
