"""The courierfilter socket protocol, pure: bytes in, ``Request`` out; ``Reply`` in, bytes out.

Courier writes, on a fresh connection per message, the data file path + ``\\n``, one or more
control file paths each + ``\\n``, then an empty line; the filter answers with an SMTP-style
reply and closes (courierfilter(8), "MAIL FILTER IMPLEMENTATION"; docs/notes/courier.md section 3).
Nothing here touches a socket or the file system: checking the paths and opening the files
they name is spool.py's.

Which failures are 5xx and which 4xx. A 5xx reply makes Courier refuse the message for good,
so it is kept for requests that can never work: bytes or path shapes that Courier itself never
writes (NUL, control characters, not UTF-8, ``..`` or ``//``, over the size limits, a symlink,
fifo, device or directory where a message file should be). Everything that a retry or a fix
on this host can cure is a 4xx (432, as Courier's own "Mail filters temporarily unavailable"):
a file that vanished or cannot be read, an I/O error, a path outside ``serve.spool_dir`` (most
likely a wrong setting, which must not bounce every message) and a relative path
(courierfilter(8) allows paths relative to /usr; Debian's build sends absolute ones).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from avtool.errors import AvtoolError

MAX_LINE = 4096  # PATH_MAX on Linux; Courier's paths are about 50 bytes (docs/notes/courier.md §3)
MAX_CONTROLS = 1000  # Courier splits long recipient lists over several control files
MAX_BYTES = 1 << 20
# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
MAX_REPLY_LINE = 510

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LF = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class Request:
    """One message as Courier names it: its data file and its control file(s)."""

    data_path: str
    control_paths: tuple[str, ...]


@dataclass(frozen=True)
class Reply:
    """An SMTP-style answer. ``text`` is one line or several; the first digit of ``code`` is
    what Courier acts on: 0 accept and skip the later filters, 1-3 accept, 4 defer, 5 reject
    (docs/notes/courier.md §3, cdfilters.C)."""

    code: int
    text: str | list[str]

    def __post_init__(self) -> None:
        code = self.code
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 599:
            raise ValueError(f"reply code must be an integer 000-599, not {code!r}")

    @property
    def lines(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)


class ProtocolError(AvtoolError):
    """The request cannot be served; ``reply`` is what to answer Courier, ``str(e)`` the log."""

    def __init__(self, message: str, reply: Reply) -> None:
        super().__init__(message)
        self.reply = reply


def malformed(reason: str, detail: str = "") -> ProtocolError:
    """A request that will never work: 500 (see the module docstring)."""
    return ProtocolError(
        f"malformed request: {reason}{detail}",
        Reply(500, f"5.3.0 Malformed mail filter request: {reason}"),
    )


def transient(reason: str, detail: str = "") -> ProtocolError:
    """A request that may work later or after a fix on this host: 432."""
    return ProtocolError(
        f"cannot serve request: {reason}{detail}",
        Reply(432, f"4.3.0 Mail filter cannot read the message: {reason}"),
    )


def format_reply(reply: Reply) -> bytes:
    """``NNN-text`` lines, then ``NNN text``, each ended by ``\\n`` as Courier reads them.

    Each text is made safe for the framing and for the SMTP client it is relayed to: control
    characters (CR, LF, NUL, ...) become spaces, other non-ASCII becomes ``?``, and a line is cut
    at 510 bytes. An empty list gives one line with the code alone.
    """
    code = f"{reply.code:03d}"
    texts = reply.lines or [""]
    out = bytearray()
    for i, text in enumerate(texts):
        sep = " " if i == len(texts) - 1 else "-"
        clean = _NOT_PRINTABLE_ASCII.sub(lambda m: " " if _CONTROL_CHARS.match(m[0]) else "?", text)
        out += (code + sep + clean).encode("ascii")[:MAX_REPLY_LINE] + b"\n"
    return bytes(out)


class RequestReader:
    """Incremental parser: ``feed`` chunks as they arrive; it returns the ``Request`` once the
    blank line is seen, ``None`` while more is needed, and raises ``ProtocolError`` (again on
    every later call) as soon as the bytes so far cannot become a valid request.

    The outcome depends only on the byte stream, not on how it is cut into chunks: every check
    looks at a prefix of the stream, and the earliest violation wins. Bytes after the blank line
    are kept in ``remainder`` (batch-test reads requests back to back).
    """

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE,
        max_controls: int = MAX_CONTROLS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if min(max_line, max_controls, max_bytes) < 1:
            raise ValueError("RequestReader limits must be >= 1")
        self.max_line = max_line
        self.max_controls = max_controls
        self.max_bytes = max_bytes
        self._buf = bytearray()  # the current, incomplete line
        self._consumed = 0  # bytes of complete lines so far
        self._data: str | None = None
        self._controls: list[str] = []
        self._request: Request | None = None
        self._error: ProtocolError | None = None
        self._rest = bytearray()

    @property
    def received(self) -> int:
        """Bytes fed so far (up to the end of the request)."""
        return self._consumed + len(self._buf)

    @property
    def remainder(self) -> bytes:
        """Bytes fed after the blank line that ended the request."""
        return bytes(self._rest)

    def feed(self, chunk: bytes) -> Request | None:
        fresh = not self._consumed and not self._buf and self._data is None
        if fresh and self._request is None and self._error is None:
            request = self._whole(chunk)
            if request is not None:
                return request
        if self._request is not None:
            self._rest += chunk
            return self._request
        if self._error is not None:
            raise self._error
        try:
            return self._feed(chunk)
        except ProtocolError as e:
            self._error = e
            self._buf = bytearray()
            raise

    def _whole(self, chunk: bytes) -> Request | None:
        """The usual case, Courier's whole request as the first chunk: one decode, one search.
        None for anything else, which the general parser decides (errors included)."""
        if len(chunk) > min(self.max_line, self.max_bytes) or not chunk.endswith(b"\n\n"):
            return None
        try:
            text = chunk[:-2].decode("utf-8")
        except UnicodeDecodeError:
            return None
        lines = text.split("\n")
        if len(lines) < 2 or len(lines) > self.max_controls + 1 or not all(lines):
            return None  # the blank line came earlier, or no control file, or too many
        if _CONTROL_BUT_LF.search(text):
            return None
        self._consumed = len(chunk)
        self._request = Request(lines[0], tuple(lines[1:]))
        return self._request

    def finish(self) -> Request:
        """The peer has closed: the request, or ProtocolError if it was cut short (432, as a
        connection closed early is no property of the message)."""
        if self._error is not None:
            raise self._error
        if self._request is None:
            self._error = ProtocolError(
                f"incomplete request: end of input after {self._consumed + len(self._buf)} bytes",
                Reply(432, "4.3.0 Incomplete mail filter request"),
            )
            raise self._error
        return self._request

    def _feed(self, chunk: bytes) -> Request | None:
        buf = self._buf
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            end = nl if nl >= 0 else len(buf)
            self._check_prefix(buf, start, end, complete=nl >= 0)
            if nl < 0:
                del buf[:start]
                return None
            line = bytes(buf[start:nl])
            self._consumed += nl + 1 - start
            start = nl + 1
            request = self._line(line)
            if request is not None:
                self._request = request
                self._rest += buf[start:]
                self._buf = bytearray()
                return request

    def _check_prefix(self, buf: bytearray, start: int, end: int, *, complete: bool) -> None:
        """Raise for the earliest violation in ``buf[start:end]``, the current line so far.
        Each one is placed at the stream offset where it becomes visible, so a shorter prefix
        (a smaller chunk) finds the same first violation or none yet."""
        length = end - start
        found: list[tuple[int, str]] = []
        nul = buf.find(b"\0", start, start + min(length, self.max_line))
        if nul >= 0:
            found.append((self._consumed + nul - start, "NUL byte"))
        if length > self.max_line:
            found.append(
                (self._consumed + self.max_line, f"line longer than {self.max_line} bytes")
            )
        if self._consumed + length + complete > self.max_bytes:
            found.append((self.max_bytes, f"request longer than {self.max_bytes} bytes"))
        if found:
            offset, reason = min(found)
            raise malformed(reason, f" (at byte {offset})")

    def _line(self, line: bytes) -> Request | None:
        if self._data is None:
            if not line:
                raise malformed("empty data file path")
            self._data = _path(line)
            return None
        if line:
            if len(self._controls) >= self.max_controls:
                raise malformed(f"more than {self.max_controls} control files")
            self._controls.append(_path(line))
            return None
        if not self._controls:
            raise malformed("no control file before the blank line")
        return Request(self._data, tuple(self._controls))


def _path(line: bytes) -> str:
    try:
        path = line.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("path is not UTF-8", f": {line[:200]!r}") from None
    if _CONTROL_CHARS.search(path):
        raise malformed("control character in a path", f": {line[:200]!r}")
    return path


def parse_request(raw: bytes, **limits: int) -> Request:
    """A complete request in one buffer (``limits`` as for RequestReader). Input that ends
    before the blank line is "incomplete" (432); bytes after it are malformed (500)."""
    reader = RequestReader(**limits)
    reader.feed(raw)
    request = reader.finish()
    if reader.remainder:
        raise malformed("data after the blank line")
    return request
