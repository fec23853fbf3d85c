"""Courier control files: the envelope of a message, and marking recipients delivered.

A control file is a list of records, one per line: a letter, then the value. The letters are
those of courier/libs/comctlfile.h (docs/notes/courier.md section 3):

    s  envelope sender            f  received-from-MTA        M  Courier's message id
    u  message source (submit)    i  authenticated user id    O  NAME=VALUE environment
    r  recipient  R  its ORCPT  N  its NOTIFY flags (one r/R/N group per recipient)
    I<n> delivery info for recipient n    S<n> / F<n> recipient n delivered / failed

``i`` (COMCTLFILE_AUTHNAME) holds the SMTP AUTH user. Sources: Courier's ChangeLog, installed
here as /usr/share/doc/courier-base/changelog.gz, entry of 2005-12-12 ("New control file
record: i - authenticated userid"); courier-pythonfilter 3.x ``control.get_auth_user`` reads
the first ``i`` record; and tests/e2e/test_harness.py shows courieresmtpd writing it.

Recipients are numbered 0, 1, ... by their ``r`` records within each file, and a big message
has several control files, so every file is read. A drop appends, per recipient, the record
pair ``I<n> R 250 Ok - <note>`` and ``S<n> <time>`` to that recipient's file: courierd then
sees the delivery as done (the technique of courier-pythonfilter's ``_mark_complete``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from avtool.courier.protocol import Reply
from avtool.errors import AvtoolError
from avtool.safedir import READ_NOFOLLOW

MAX_CONTROL_BYTES = 16 << 20  # the observed ones: about 250 bytes plus ~30 per recipient

_KEYS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_INDEX = re.compile(r"(\d{1,9})(?: |$)")
_UNSAFE = re.compile(r"[^\x20-\x7e]")
_FLAGS = READ_NOFOLLOW  # O_RDONLY is 0: ``O_RDWR | _FLAGS`` opens for writing


class ControlError(AvtoolError):
    """A control file cannot be used; ``reply`` is what to answer Courier, ``str(e)`` the log.

    4xx (432) when a retry may work: a file vanished, cannot be read or written, or changed
    under us. 5xx (500) when the file can never work: not a regular file, binary junk, too
    large, or no recipient at all."""

    def __init__(self, message: str, reply: Reply) -> None:
        super().__init__(message)
        self.reply = reply


def _broken(reason: str, path: str) -> ControlError:
    return ControlError(f"{reason}: {path}", Reply(500, f"5.3.0 Unusable control file: {reason}"))


def _failed(reason: str, path: str) -> ControlError:
    return ControlError(
        f"{reason}: {path}", Reply(432, f"4.3.0 Mail filter cannot use the control file: {reason}")
    )


@dataclass(frozen=True)
class Recipient:
    """One ``r``/``R``/``N`` group: ``index`` counts ``r`` records in ``file`` from 0; ``done``
    means an ``S`` or ``F`` record for it already exists."""

    address: str
    orcpt: str
    notify: str
    file: str
    index: int
    done: bool


@dataclass(frozen=True)
class Envelope:
    """What Courier knows about a message, merged over all of its control files."""

    sender: str  # "" for the null sender <>
    recipients: tuple[Recipient, ...]
    message_id: str | None
    received_from: str | None
    # submit's source: "local", "esmtp", "authsmtp", ... Observed: "authsmtp" also for
    # unauthenticated relay clients (tests/e2e), so it proves no login: use auth_user.
    source: str | None
    auth_user: str | None
    relay_client: bool  # courieresmtpd set RELAYCLIENT (smtpaccess allow,RELAYCLIENT)
    remote_ip: str | None  # TCPREMOTEIP, an IPv4-mapped address written as IPv4

    @property
    def pending(self) -> tuple[Recipient, ...]:
        """Recipients not yet delivered or failed."""
        return tuple(r for r in self.recipients if not r.done)


@dataclass
class _Parsed:
    """One control file: its single-valued records (first one wins), environment records,
    recipients and which of them are done; ``newline`` is False if the last line is cut."""

    values: dict[str, str] = field(default_factory=dict)
    env: list[str] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)  # [address, orcpt, notify]
    done: set[int] = field(default_factory=set)
    newline: bool = True


def _parse(raw: bytes, path: str) -> _Parsed:
    if b"\0" in raw:
        raise _broken("NUL byte in the control file", path)
    parsed = _Parsed(newline=raw.endswith(b"\n") or not raw)
    # One decode for the whole file: "\n" is never part of a UTF-8 sequence, so the lines
    # are the same as if each were decoded alone.
    for line in raw.decode("utf-8", "replace").split("\n"):
        if not line:
            continue  # the end of the file, or an empty line Courier never writes: harmless
        key = line[0]
        if key not in _KEYS:
            raise _broken("binary junk in the control file", path)
        value = line[1:]
        if key == "r":
            parsed.recipients.append([value, "", ""])
        elif key in "RN" and parsed.recipients:
            parsed.recipients[-1]["RN".index(key) + 1] = value
        elif key in "SF":
            m = _INDEX.match(value)
            if m:  # anything else is a cut last line: no record, so no delivery
                parsed.done.add(int(m[1]))
        elif key == "O":
            parsed.env.append(value)
        else:
            parsed.values.setdefault(key, value)
    return parsed


def _read(path: str, fd: int, max_bytes: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _broken("not a regular file", path)
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _broken(f"control file larger than {max_bytes} bytes", path)
    return b"".join(chunks)


def _open(path: str, mode: int, within: tuple[str, int] | None = None) -> int:
    """Open ``path`` never through a link as its last step; through the directory descriptor
    of ``within`` (directory, descriptor) when ``path`` is in that directory."""
    name, dir_fd = path, None
    if within is not None and os.path.dirname(path) == within[0]:
        name, dir_fd = os.path.basename(path), within[1]
    try:
        return os.open(name, mode | _FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        raise _failed("control file vanished", path) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _broken("control file is a symlink", path) from None
        raise _failed(f"cannot open the control file ({e.strerror})", path) from None


def _load(path: str, max_bytes: int) -> _Parsed:
    fd = _open(path, os.O_RDONLY)
    try:
        return _parse(_read(path, fd, max_bytes), path)
    except OSError as e:
        raise _failed(f"cannot read the control file ({e.strerror})", path) from None
    finally:
        os.close(fd)


def read_envelope(control_paths: Iterable[str], *, max_bytes: int = MAX_CONTROL_BYTES) -> Envelope:
    """Read every control file of a message (no symlinks, regular files only) into one
    Envelope. Raises ControlError (see there for 4xx vs 5xx)."""
    paths = tuple(control_paths)
    if not paths:
        raise ControlError("no control file", Reply(500, "5.3.0 No control file"))
    if len(set(paths)) != len(paths):
        raise _broken("the same control file named twice", paths[0])
    values: dict[str, str] = {}
    env: list[str] = []
    recipients: list[Recipient] = []
    for path in paths:
        parsed = _load(path, max_bytes)
        for key, value in parsed.values.items():
            values.setdefault(key, value)
        env.extend(parsed.env)
        recipients.extend(
            Recipient(address, orcpt, notify, path, i, i in parsed.done)
            for i, (address, orcpt, notify) in enumerate(parsed.recipients)
        )
    if not recipients:
        raise _broken("no recipient in the control file(s)", paths[0])
    names = dict(item.partition("=")[::2] for item in env)
    return Envelope(
        sender=values.get("s", ""),
        recipients=tuple(recipients),
        message_id=values.get("M") or None,
        received_from=values.get("f") or None,
        source=values.get("u") or None,
        auth_user=values.get("i") or None,
        relay_client="RELAYCLIENT" in names,
        remote_ip=_ip(names.get("TCPREMOTEIP", "")),
    )


@functools.lru_cache(maxsize=1024)  # the same clients send again and again
def _ip(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def clean_note(note: str, limit: int = 400) -> str:
    """One safe line for an ``I`` record: printable ASCII, no CR/LF, bounded."""
    return " ".join(_UNSAFE.sub(" ", note).split())[:limit]


def mark_delivered(
    envelope: Envelope,
    recipients: Iterable[Recipient],
    note: str,
    now: float,
    *,
    max_bytes: int = MAX_CONTROL_BYTES,
    within: tuple[str, int] | None = None,
) -> None:
    """Mark ``recipients`` delivered, so that courierd delivers nothing to them and sends no
    bounce (the drop, docs/notes/courier.md §3). Each gets ``I<n> R 250 Ok - <note>`` and
    ``S<n> <now>`` in its own control file; one already done is skipped.

    Per file the whole text goes out in one ``write`` on an ``O_APPEND`` descriptor, then
    fsync; a short or failed write is cut back off, so a file never keeps half a record.
    Before writing, the file is read again: a recipient whose slot now holds another address
    raises ControlError (432) rather than marking someone else. Across files it is not atomic;
    the caller answers 4xx on any error, and then Courier discards all the files.
    ``within``: (directory, its open descriptor), the data file's (courier/spool.py): control
    files in it are opened through the descriptor, whatever the path names by now.
    """
    by_file: dict[str, list[Recipient]] = {}
    for r in recipients:
        if r not in envelope.recipients:
            raise ValueError(f"recipient {r.address!r} is not one of this envelope's")
        by_file.setdefault(r.file, []).append(r)
    text = clean_note(note)
    for path, group in by_file.items():
        _mark_file(path, group, text, int(now), max_bytes, within)


def _mark_file(
    path: str,
    group: list[Recipient],
    note: str,
    now: int,
    max_bytes: int,
    within: tuple[str, int] | None,
) -> None:
    fd = _open(path, os.O_RDWR | os.O_APPEND, within)
    try:
        try:
            raw = _read(path, fd, max_bytes)
        except OSError as e:
            raise _failed(f"cannot read the control file ({e.strerror})", path) from None
        parsed = _parse(raw, path)
        records: list[str] = []
        marked: set[int] = set()
        for r in group:
            if r.index >= len(parsed.recipients) or parsed.recipients[r.index][0] != r.address:
                raise _failed(f"recipient {r.index} <{r.address}> changed", path)
            if r.index in parsed.done or r.index in marked:
                continue
            marked.add(r.index)
            records.append(f"I{r.index} R 250 Ok - {note}\nS{r.index} {now}\n")
        if not records:
            return
        # A cut last line would swallow our first record: start on a line of our own.
        data = ("" if parsed.newline else "\n") + "".join(records)
        _append(fd, path, len(raw), data.encode("ascii"))
    finally:
        os.close(fd)


def _append(fd: int, path: str, size: int, data: bytes) -> None:
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    except OSError as e:
        with contextlib.suppress(OSError):  # nothing better to do than report the first error
            os.ftruncate(fd, size)
        raise _failed(f"cannot write the control file ({e.strerror})", path) from None
