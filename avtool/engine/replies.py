"""clamd's replies as verdicts: pure functions over bytes, tested with tables of byte strings.

The reply shapes are those measured in docs/notes/clamav.md section 2 and written by clamd/session.c
(``conn_reply*``): ``TARGET: OK``, ``TARGET: NAME FOUND``, ``TARGET: MESSAGE ERROR``, or an
``ERROR`` about the command itself with no target (``INSTREAM size limit exceeded. ERROR``).
TARGET is ``stream``, ``fd[N]`` or the scanned path. With the ``z`` prefix each reply ends in
``\\0``; a reply without it was cut off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from avtool.engine.verdict import Clean, Failed, Infected, Unchecked, Verdict

# Names that mean "clamd could not look", not "clamd found something" (AlertEncrypted,
# AlertExceedsMax in clamd.conf(5)).
ENCRYPTED = "Heuristics.Encrypted."
LIMITS = "Heuristics.Limits.Exceeded"
SIZE_LIMIT = "INSTREAM size limit exceeded"
TOO_LARGE = "too large for clamd StreamMaxLength"

_TARGET = re.compile(r"^(?:stream|fd\[\d+\]): ")
# A signature name: no spaces (clamd's DB formats use ':' as a field separator, names have none).
_NAME = re.compile(r"^[^\s:]+$")


class BackendFailure(Exception):
    """No usable answer (connection, timeout, protocol): set the backend aside, try the next.

    ``timeout`` tells a timeout from other failures; ``reason`` is one line for logs and verdicts.
    """

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


class FileProblem(Exception):
    """The message itself could not be read (INSTREAM): no backend is to blame, no failover."""


@dataclass(frozen=True, slots=True)
class Version:
    """What VERSION says: ``ClamAV 1.4.6/27000/Tue Nov 24 09:23:41 2025``, or just
    ``ClamAV 1.4.6`` when clamd has no daily database (notes 2: do not assume the ``/`` parts).
    """

    product: str  # "ClamAV 1.4.6"
    engine: str | None  # "1.4.6"
    db_version: int | None
    db_date: str | None


def reply_text(raw: bytes) -> str:
    """The text of a complete single reply; BackendFailure if it is empty or was cut off."""
    if not raw:
        raise BackendFailure("clamd closed the connection without a reply")
    if not raw.endswith(b"\0"):
        shown = raw[:80].decode("utf-8", "replace")
        raise BackendFailure(f"clamd closed the connection mid-reply: {shown!r}")
    return raw[:-1].decode("utf-8", "replace").strip()


def parse_version(raw: bytes) -> Version:
    text = reply_text(raw)
    product, _, rest = text.partition("/")
    if not product.startswith("ClamAV "):
        raise BackendFailure(f"unexpected VERSION reply {text[:80]!r}")
    engine = product.split(" ", 1)[1].strip() or None
    db_text, _, date = rest.partition("/")
    db_version = int(db_text) if db_text.isdigit() else None
    return Version(product, engine, db_version, date.strip() or None)


def scan_verdict(raw: bytes, *, backend: str, path: str | None = None) -> Verdict:
    """The verdict in a reply to FILDES, INSTREAM or SCAN (``path``: the path sent with SCAN).

    ``ERROR`` replies about the scanned file (``TARGET: ... ERROR``, e.g. access denied) are
    clamd's considered answer: Failed, and the backend stays healthy. ``ERROR`` replies about
    the command (no target, e.g. ``UNKNOWN COMMAND``) and anything unparsable raise
    BackendFailure. The INSTREAM size limit is Unchecked: clamd could not look at all of it.
    """
    text = reply_text(raw)
    if text.endswith(": OK") and "\n" not in text:
        return Clean(backend)  # most mail: skip the general parse
    lines = [line.strip() for line in re.split(r"[\0\n]", text) if line.strip()]
    if not lines:
        raise BackendFailure("clamd sent an empty reply")
    names: list[str] = []
    for line in lines:
        if line.startswith(SIZE_LIMIT):
            return Unchecked(TOO_LARGE, backend)
        if line.endswith(" FOUND"):
            head, sep, name = line[: -len(" FOUND")].rpartition(": ")
            if not sep or not head or not _NAME.match(name):
                raise BackendFailure(f"unexpected reply from clamd: {line[:120]!r}")
            names.append(name)
        elif line.endswith(": OK"):
            continue
        elif line.endswith("ERROR"):
            message = line[: -len("ERROR")].rstrip()
            if _about_file(message, path):
                return Failed(f"clamd error: {message}", backend)
            raise BackendFailure(f"clamd error: {message or line}")
        else:
            raise BackendFailure(f"unexpected reply from clamd: {line[:120]!r}")
    if not names:
        return Clean(backend)
    return names_verdict(tuple(names), backend)


def names_verdict(names: tuple[str, ...], backend: str) -> Verdict:
    """Infected, unless every name only says clamd could not look (then Unchecked)."""
    found = tuple(n for n in names if not (n.startswith(ENCRYPTED) or n.startswith(LIMITS)))
    if found:
        return Infected(found, backend)
    name = names[0]
    if name.startswith(ENCRYPTED):
        return Unchecked(f"encrypted archive: {name}", backend)
    return Unchecked(f"clamd limits exceeded: {name}", backend)


def _about_file(message: str, path: str | None) -> bool:
    if _TARGET.match(message):
        return True
    # SCAN echoes the absolute path (converted to UTF-8, so not always byte-equal to ours);
    # an error about the command itself never starts with "/".
    return path is not None and message.startswith("/")
