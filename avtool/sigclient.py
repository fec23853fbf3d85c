"""``avtool sig``: signal the running filter and read its answer back over a named pipe.

The pipe is created by this client (0620, group courier when run as root, so the daemon running
as courier can write it), then the signal is sent, then the answer read until its ``END`` line
(ipc.py), bounded by a timeout; the pipe is removed afterwards. One request at a time: a lock
file next to the pipe (``flock``) is held for the whole request. A pipe with no lock holder was
left by a client that died: it is stale, removed with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from avtool import keys as K
from avtool.config import Config
from avtool.errors import AvtoolError
from avtool.ipc import DEBUG_PIPE, END_ERROR, END_OK, alive, read_pid

SIGNALS = {
    ("reload", None): signal.SIGHUP,
    ("reload", "config"): signal.SIGUSR1,
    ("reload", "virus"): signal.SIGUSR2,
    ("stats", None): signal.SIGURG,
}


class SigError(AvtoolError):
    """A failed request; ``exit_code`` is the documented status (README, avtool sig)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Target:
    pid: int
    pipe: Path


@dataclass(frozen=True)
class Answer:
    lines: list[str]
    ok: bool


def target(cfg: Config, pid: int | None) -> Target:
    """Who to signal and where the answer comes: ``-p PID`` uses ./avtool_sig.pipe (serve
    --debug writes there), otherwise the pid file and the configured pipe."""
    if pid is None:
        found = read_pid(Path(cfg[K.PID_FILE]))
        if found is None:
            raise SigError(f"avtool is not running: no pid in {cfg[K.PID_FILE]}", 3)
        pid, pipe = found, Path(cfg[K.PIPE])
    else:
        pipe = Path(DEBUG_PIPE)
    if not alive(pid):
        raise SigError(f"avtool is not running: no process {pid} (stale pid file?)", 3)
    return Target(pid, pipe)


def request(where: Target, signum: int, timeout: float, warn: list[str]) -> Answer:
    """Send ``signum`` and return the daemon's answer; SigError on busy, gone or timeout."""
    with _locked(where.pipe, warn), _fifo(where.pipe) as fd:
        try:
            os.kill(where.pid, signum)
        except ProcessLookupError:
            raise SigError(f"avtool is not running: no process {where.pid}", 3) from None
        except PermissionError:
            raise SigError(
                f"not allowed to signal process {where.pid} (run as courier)", 2
            ) from None
        return _read_answer(fd, timeout)


@contextlib.contextmanager
def _locked(pipe: Path, warn: list[str]) -> Iterator[None]:
    lock_path = pipe.with_name(pipe.name + ".lock")
    try:
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise SigError(f"{lock_path}: {e.strerror}", 2) from e
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SigError(f"{pipe}: another avtool sig request is in progress", 4) from None
        if os.path.lexists(pipe):
            warn.append(f"{pipe}: removing a stale pipe (its client is gone)")
            os.unlink(pipe)
        yield
    finally:
        os.close(lock)


@contextlib.contextmanager
def _fifo(pipe: Path) -> Iterator[int]:
    """The pipe, open for reading; a writer end of our own keeps reads blocking (not EOF)
    until the daemon has written, so the END line, not EOF, ends the answer."""
    os.mkfifo(pipe, 0o620)
    try:
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError, OSError):
                os.chown(pipe, -1, grp.getgrnam("courier").gr_gid)
        os.chmod(pipe, 0o620)  # the umask may have taken the group's write bit
        fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        keep = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        try:
            yield fd
        finally:
            os.close(keep)
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pipe)


def _read_answer(fd: int, timeout: float) -> Answer:
    until = time.monotonic() + timeout
    buf = b""
    lines: list[str] = []
    while True:
        left = until - time.monotonic()
        if left <= 0:
            raise SigError(f"no answer within {timeout:g} s", 5)
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode(errors="replace")
            if line in (END_OK, END_ERROR):
                return Answer(lines, line == END_OK)
            lines.append(line)
        if len(buf) > 1 << 20:
            raise SigError("answer line too long", 1)


def parse_stats(lines: list[str]) -> dict[str, object]:
    """``name value`` lines and ``clamd ADDRESS k=v ...`` lines (reload.answer_stats)."""
    stats: dict[str, object] = {}
    clamds: list[dict[str, str]] = []
    for line in lines:
        name, _, rest = line.partition(" ")
        if name == "clamd":
            rest, _, version = rest.partition(" version=")  # the last field, may hold spaces
            address, *pairs = rest.split(" ")
            entry = {"address": address, "version": version}
            for pair in pairs:
                key, eq, value = pair.partition("=")
                if eq:
                    entry[key] = value
            clamds.append(entry)
        elif rest != "-":
            stats[name] = _number(rest)
        else:
            stats[name] = None
    stats["clamd"] = clamds
    return stats


def _number(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def prometheus(stats: dict[str, object]) -> str:
    """The text exposition format, for node_exporter's textfile collector."""
    out = [
        "# HELP avtool_messages_total Messages by verdict or action since the daemon started.",
        "# TYPE avtool_messages_total counter",
    ]
    for key in ("clean", "infected", "unchecked", "failed", "exempt", "errors"):
        out.append(f'avtool_messages_total{{verdict="{key}"}} {stats.get(key, 0)}')
    for key in ("accept", "pass", "reject", "drop", "quarantine", "defer", "deferred"):
        out.append(f'avtool_messages_total{{action="{key}"}} {stats.get(key, 0)}')
    out += ["# HELP avtool_scan_ms Scan time of recent messages.", "# TYPE avtool_scan_ms gauge"]
    for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
        value = stats.get(key)
        out.append(f'avtool_scan_ms{{quantile="{q}"}} {"NaN" if value is None else value}')
    out += [
        "# HELP avtool_clamd_errors_total Connection, timeout and protocol failures per clamd.",
        "# TYPE avtool_clamd_errors_total counter",
    ]
    clamds = stats.get("clamd") or []
    assert isinstance(clamds, list)  # noqa: S101 - parse_stats makes it a list
    for c in clamds:
        out.append(f'avtool_clamd_errors_total{{backend="{c["address"]}"}} {c.get("errors", 0)}')
    out += [
        "# HELP avtool_uptime_seconds Seconds since the daemon started.",
        "# TYPE avtool_uptime_seconds gauge",
        f"avtool_uptime_seconds {stats.get('uptime_s', 0)}",
    ]
    return "\n".join(out) + "\n"
