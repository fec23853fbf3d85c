"""What ``avtool scan`` reads: one Message (where its bytes are), a Problem with an input, and
the few header fields a report shows (From, Subject), read from the message's head only."""

from __future__ import annotations

import contextlib
import os
import unicodedata
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesHeaderParser
from typing import Literal

Format = Literal["file", "maildir", "mbox", "mh"]

# The header section of real mail is a few KB; a longer one is cut here (shown fields are
# near the top: From and Subject are set by the sender, Received lines are prepended above).
HEAD_LIMIT = 64 << 10
SHOWN = 200  # characters of a From or Subject shown in a report line
# Characters of a raw field decoded for display. The email package's parsers are quadratic on
# some input (a From: of 60 KB of backslashes, commas or dots took 23 s, each message): what
# is shown is SHOWN characters, and an encoded word is at most 75 (RFC 2047 2), so 2 KiB of
# the raw field is plenty.
DECODE_LIMIT = 2 << 10


class OpenFile:
    """A descriptor shared by the messages read from one file (an mbox, or stdin spooled to an
    anonymous temp file). Worker threads scan those messages after the walk has moved on, so
    the file is closed when the last message that refers to it is dropped (CPython frees it at
    once when its reference count reaches zero)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass(frozen=True, slots=True)
class Message:
    """One message: where it lives and where its bytes are.

    ``mailbox`` is the Maildir, mbox or MH folder (for a loose file, the file itself; ``-`` for
    standard input). ``key`` names the message inside it: the Maildir unique name (the file
    name before ``:2,``, as Python's mailbox.Maildir keys them), the mbox message number from 1
    (as mail(1) and mutt number them), the MH message number; empty for a loose file.

    File-backed messages (file, Maildir, MH) are read from ``path``. Range messages (mbox, stdin)
    are ``size`` bytes at ``offset`` in ``source``; an mbox message spans ``start`` (its From_
    line) to ``end`` (the next From_ line, or the end of the file): what a rewrite cuts out.
    """

    mailbox: str
    format: Format
    key: str
    path: str
    size: int
    offset: int = 0
    start: int = 0
    end: int = 0
    subdir: str = ""  # Maildir: "new" or "cur"
    info: str = ""  # Maildir: what follows ":" in the file name, e.g. "2,FS"
    # The file's (st_dev, st_ino) when it was listed, then when it was scanned: a move acts
    # only on that inode (0, 0: unknown, never moved).
    dev: int = 0
    ino: int = 0
    mtime: int = 0  # file-backed: st_mtime_ns when listed (rescan's window and state)
    source: OpenFile | None = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        """How a report names it: ``mailbox [key]``, or the file alone."""
        return f"{self.mailbox} [{self.key}]" if self.key else self.mailbox


@dataclass(frozen=True, slots=True)
class Problem:
    """An input that could not be read as mail, or an action that failed: one line each.

    ``error`` False marks a note that leaves the exit status alone (a file met while walking a
    directory that is not mail, a message deleted by its owner while the scan ran).
    """

    path: str
    text: str
    error: bool = True


def read_head(fd: int, offset: int, size: int) -> bytes:
    """The header section of the message at ``offset`` (up to HEAD_LIMIT bytes)."""
    data = os.pread(fd, min(size, HEAD_LIMIT), offset)
    for sep in (b"\n\n", b"\r\n\r\n"):
        cut = data.find(sep)
        if cut >= 0:
            return data[: cut + len(sep)]
    return data


def sender_and_subject(head: bytes) -> tuple[str | None, str | None]:
    """From and Subject, decoded (RFC 2047) and made safe to print on a terminal."""
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
    return _field(parsed, "From"), _field(parsed, "Subject")


def _field(parsed: object, name: str) -> str | None:
    raw = parsed.get(name)  # type: ignore[attr-defined]
    if raw is None:
        return None
    text, cut = capped(str(raw))
    try:
        # policy.default decodes encoded words; it raises assorted errors (ValueError,
        # IndexError, HeaderParseError) on malformed fields, which spam is full of.
        value = str(policy.default.header_factory(name, text))
    except Exception:  # noqa: BLE001 - fall back to the raw text, still shown
        value = text
    return printable(value + (" …" if cut else ""))


def capped(raw: str, limit: int = DECODE_LIMIT) -> tuple[str, bool]:
    """The start of a raw field value, unfolded, at most ``limit`` characters, for decoding
    (DECODE_LIMIT), and whether it was cut. A cut falls on a space when one is near, so that
    the last encoded word stays whole."""
    text = " ".join(raw[: 4 * limit].split())  # unfolded (a fold is a line break + blank)
    if len(text) <= limit:
        return text, len(raw) > 4 * limit
    cut = text.rfind(" ", limit - 80, limit)
    return text[: cut if cut > 0 else limit], True


def printable(text: str, limit: int = SHOWN) -> str:
    """One line with no control characters: headers are attacker-controlled, and an escape
    sequence in a Subject must not reach the admin's terminal."""
    out = []
    for ch in " ".join(text.split()):
        out.append("?" if unicodedata.category(ch) in ("Cc", "Cf", "Cs") else ch)
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"
