"""``avtool sig``: signal the running filter and read its answer back over a named pipe.

The answers protocol is ipc.py's: the daemon opens the pipe for writing, writes plain text lines
and a last ``END ok`` / ``END error`` line. This module is the client side; it prints nothing.

The pipe, one request at a time, and stale pipes:

- The pipe is made under a private name (``.NAME.PID.tmp``), opened for reading (non-blocking,
  never through a symlink), **flock()ed**, given to the daemon's user, and only then hard-linked
  to its real name. ``link()`` fails if the name exists, so two clients never share a pipe, and
  a pipe is locked for as long as it carries its name: the client unlinks it before closing.
- An existing pipe means another request, unless nobody holds its lock: the kernel drops a lock
  when its holder dies, so a pipe whose lock can be taken was left by a client that was killed.
  That one is removed with a warning and the request goes on. No age test is needed (an age
  test would refuse for a while after a crash, or take over a slow request that is still alive).
- Permissions (avfilter_sig's "minimal permissions"): 0600 and owned by the daemon's user when
  run as root (the daemon writes as owner; a later client run as that user, e.g. freshclam's
  sudo, can still lock and clean it); 0600 when run as the daemon's user; else 0620 with the
  daemon's group. The daemon's ids come from /proc/PID/status, else group ``courier``.
- Root signals only the avtool daemon. The pid file is written by the daemon's user (courier),
  who could name any process in it (sshd: SIGHUP/USR1/USR2 end most programs). So as root the
  process must be ``avtool serve`` (its /proc/PID/cmdline) running with the pid file owner's
  uid (real, effective, saved: /proc/PID/status), else the request is refused as "not running"
  (exit 3); ``-p PID`` is checked the same way, against the process's own uid. The check is
  made on a pidfd (pidfd_open(2)) opened first, and the pidfd is confirmed alive after /proc was
  read: a pid is not reused while its process exists, so what was read is the process the pidfd
  names, and the signal goes to that pidfd, never to a recycled pid. And the signal is sent by
  a child that has dropped to that uid (setgroups, setresgid, setresuid), so even a mistake in
  the check can only reach a process the pid file owner could signal anyway.
- The read end is open before the signal is sent, so the daemon's non-blocking open succeeds; a
  write end of our own keeps reads from seeing EOF until the daemon has written. Once it has, that
  end is closed, and EOF without an ``END`` line means the answer was cut short. The wait is
  bounded by the timeout, and ends early if the daemon process goes away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import grp
import os
import select
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from avtool.config import Config
from avtool.config import keys as K
from avtool.control.ipc import DEBUG_PIPE, END_ERROR, END_OK, alive, read_pid_file, unsafe_dir
from avtool.errors import AvtoolError

RELOAD_SIGNALS: dict[str | None, signal.Signals] = {
    None: signal.SIGHUP,  # config and virus database
    "config": signal.SIGUSR1,
    "virus": signal.SIGUSR2,
}
STATS_SIGNAL = signal.SIGURG  # ignored by default: harmless when sent to a wrong pid
DAEMON_GROUP = "courier"  # when the daemon's ids cannot be read from /proc
LIVENESS_S = 1.0  # how often the wait checks that the daemon still runs
MAX_LINE = 1 << 20

End = Literal["ok", "error", "eof", "timeout", "gone"]
EXIT = {"ok": 0, "error": 1, "eof": 1, "timeout": 5, "gone": 3}


class SigError(AvtoolError):
    """A request that could not be made; ``exit_code`` is the documented status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotRunning(SigError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 3)


class Busy(SigError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 4)


@dataclasses.dataclass(frozen=True)
class Target:
    """Who to signal, where the answer comes, and, when root asks, the only uid the daemon may
    run as (the pid file owner's; with -p the process's own), checked and signalled as by
    ``request``. ``owner`` None: not root, the kernel lets us signal only our own processes."""

    pid: int
    pipe: Path
    owner: int | None = None


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the daemon wrote, and how the answer ended: ``ok``/``error`` (its END line), ``eof``
    (closed without END), ``timeout``, or ``gone`` (the process ended while we waited)."""

    lines: tuple[str, ...]
    end: End
    waited_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT[self.end]

    def problem(self, where: Target, timeout: float) -> str | None:
        """One line for the user when the answer is not complete, else None."""
        if self.end == "eof":
            return f"process {where.pid} closed the pipe before its END line: answer incomplete"
        if self.end == "timeout":
            return f"no answer from process {where.pid} within {timeout:g} s"
        if self.end == "gone":
            return f"the filter is not running: process {where.pid} ended before answering"
        return None


def target(cfg: Config, pid: int | None) -> Target:
    """Who to signal and where the answer comes: ``-p PID`` uses ./avtool_sig.pipe (serve
    --debug answers there), otherwise the pid file and the configured pipe."""
    root = os.geteuid() == 0
    if pid is None:
        found = read_pid_file(Path(cfg[K.PID_FILE]))
        if found is None:
            raise NotRunning(f"the filter is not running: no pid in {cfg[K.PID_FILE]}")
        if not alive(found[0]):
            raise NotRunning(
                f"the filter is not running: stale pid file {cfg[K.PID_FILE]} ({found[0]})"
            )
        return Target(found[0], Path(cfg[K.PIPE]), found[1] if root else None)
    if pid <= 0:  # kill() would signal a whole process group
        raise SigError(f"-p {pid}: not a process id", 2)
    if not alive(pid):
        raise NotRunning(f"the filter is not running: no process {pid}")
    owner = _process_ids(pid, fallback=False)[0] if root else None
    if root and owner is None:
        raise NotRunning(f"the filter is not running: cannot read /proc/{pid}")
    return Target(pid, Path(DEBUG_PIPE), owner)


def request(where: Target, signum: int, timeout: float, warn: list[str]) -> Answer:
    """Make the pipe, send ``signum``, return the answer; SigError when it cannot be asked.
    Warnings (a stale pipe removed) are appended to ``warn``."""
    with _pidfd(where.pid) as pidfd:
        if where.owner is not None:
            _check_daemon(where, pidfd)
        with _pipe(where, warn) as fds:
            _send(where, pidfd, signum)
            return _read_answer(fds, where.pid, timeout)


# ---- who gets the signal -----------------------------------------------------------------------
@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[int | None]:
    """A pidfd for ``pid`` (None where the kernel has none: the uid drop still holds)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise NotRunning(f"the filter is not running: no process {pid}") from None
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise SigError(f"process {pid}: {e.strerror}", 3) from e
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def is_avtool_serve(argv: list[str]) -> bool:
    """True for the command lines the daemon runs with: ``avtool [opts] serve ...`` (the
    console script, directly or as ``python /path/avtool``) and ``python [opts] -m avtool
    [opts] serve ...``."""
    if not argv:
        return False
    rest: list[str] | None = None
    if Path(argv[0]).name == "avtool":
        rest = argv[1:]
    elif Path(argv[0]).name.startswith("python"):
        i = 1
        while i < len(argv) and argv[i].startswith("-") and argv[i] != "-m":
            i += 2 if argv[i] in ("-W", "-X") else 1
        if argv[i : i + 2] == ["-m", "avtool"]:
            rest = argv[i + 2 :]
        elif i < len(argv) and Path(argv[i]).name == "avtool":
            rest = argv[i + 1 :]
    for arg in rest or []:
        if arg == "serve":
            return True
        if not arg.startswith("-"):
            return False
    return False


def _check_daemon(where: Target, pidfd: int | None) -> None:
    """Refuse (exit 3, as "not running") unless ``where.pid`` is ``avtool serve`` run by
    ``where.owner`` (module docstring: what root trusts, and why on a pidfd)."""
    pid = where.pid
    try:
        argv = [a.decode(errors="replace") for a in _read_proc(pid, "cmdline").split(b"\0")]
        status = _read_proc(pid, "status").decode(errors="replace")
    except OSError:
        raise NotRunning(f"the filter is not running: no process {pid}") from None
    uids: set[int] = set()
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uids = {int(x) for x in line.split()[1:4]}  # real, effective, saved
    shown = " ".join(a for a in argv if a)[:120] or "?"
    if not is_avtool_serve([a for a in argv if a]):
        raise NotRunning(
            f"the filter is not running: process {pid} is not avtool serve ({shown}); "
            "refusing to signal it"
        )
    if uids != {where.owner}:
        raise NotRunning(
            f"the filter is not running: process {pid} ({shown}) runs as uid "
            f"{','.join(map(str, sorted(uids))) or '?'}, not as uid {where.owner} "
            "(the pid file's owner); refusing to signal it"
        )
    if pidfd is not None:  # still the process we read about: its pid cannot have been reused
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            raise NotRunning(f"the filter is not running: process {pid} ended") from None


def _read_proc(pid: int, name: str) -> bytes:
    fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(1 << 16)


def _send(where: Target, pidfd: int | None, signum: int) -> None:
    """Signal the process (through its pidfd when there is one); as root, from a child that has
    become ``where.owner`` first (module docstring)."""
    owner = where.owner
    if owner is None or owner == os.geteuid():
        code = _kill(where.pid, pidfd, signum)
    else:
        gid = _process_ids(where.pid)[1]
        if gid is None:
            raise NotRunning(f"the filter is not running: cannot read /proc/{where.pid}")
        child = os.fork()
        if child == 0:  # pragma: no cover - the child only signals and exits
            code = 5
            try:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(owner, owner, owner)  # last: it takes the right to change ids
                code = _kill(where.pid, pidfd, signum)
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    if code == 3:
        raise NotRunning(f"the filter is not running: no process {where.pid}")
    if code == 4:
        raise SigError(f"not allowed to signal process {where.pid}: run as root or as its user", 2)
    if code != 0:
        raise SigError(f"could not signal process {where.pid}", 2)


def _kill(pid: int, pidfd: int | None, signum: int) -> int:
    """0 sent, 3 no such process, 4 not allowed."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return 3
    except PermissionError:
        return 4
    return 0


# ---- the pipe ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Fds:
    read: int
    keep: int | None  # our write end, closed once the daemon writes

    def release_keep(self) -> None:
        if self.keep is not None:
            os.close(self.keep)
            self.keep = None


@contextlib.contextmanager
def _pipe(where: Target, warn: list[str]) -> Iterator[_Fds]:
    pipe = where.pipe
    daemon_uid = _process_ids(where.pid)[0]
    problem = unsafe_dir(pipe, () if daemon_uid is None else (daemon_uid,))
    if problem is not None:
        raise SigError(f"{pipe}: refusing to create the answers pipe: {problem}", 2)
    temp = pipe.with_name(f".{pipe.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by a killed client that had our pid
    try:
        os.mkfifo(temp, 0o600)
    except OSError as e:
        raise SigError(f"{pipe}: cannot create the answers pipe: {e.strerror}", 2) from e
    fds = _Fds(-1, None)
    try:
        fds.read = os.open(temp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fds.read)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
            raise SigError(f"{temp}: replaced while being created", 2)
        fcntl.flock(fds.read, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: nobody else has it yet
        fds.keep = os.open(temp, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        _grant(fds.read, where.pid)
        _install(temp, pipe, warn)
        os.unlink(temp)
        try:
            yield fds
        finally:
            _remove_if_ours(pipe, st)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        for fd in (fds.keep, fds.read):
            if fd is not None and fd >= 0:
                os.close(fd)


def _grant(fd: int, pid: int) -> None:
    """Let the daemon write the pipe, and nobody else more than needed (module docstring)."""
    uid, gid = _process_ids(pid)
    euid = os.geteuid()
    if uid is not None and uid == euid:
        os.fchmod(fd, 0o600)
    elif uid is not None and euid == 0:
        os.fchown(fd, uid, gid if gid is not None else -1)
        os.fchmod(fd, 0o600)
    else:
        if gid is not None:
            with contextlib.suppress(PermissionError):  # only to a group we are in
                os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o620)


def _process_ids(pid: int, *, fallback: bool = True) -> tuple[int | None, int | None]:
    """Effective uid and gid of ``pid`` (the daemon may have switched user after its start);
    without /proc, the gid of group courier unless ``fallback`` is False."""
    ids: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Uid", "Gid"):
                ids[key] = int(rest.split()[1])  # real, effective, saved, fs
    if "Gid" not in ids and fallback:
        with contextlib.suppress(KeyError):
            ids["Gid"] = grp.getgrnam(DAEMON_GROUP).gr_gid
    return ids.get("Uid"), ids.get("Gid")


def _install(temp: Path, pipe: Path, warn: list[str]) -> None:
    """Give the locked pipe its name; a stale pipe in the way is removed once, a live one is
    another request (Busy)."""
    for attempt in range(2):
        try:
            os.link(temp, pipe)
            return
        except FileExistsError:
            if attempt == 0 and _remove_stale(pipe, warn):
                continue
            raise Busy(f"{pipe}: another avtool sig request is in progress") from None
        except OSError as e:
            raise SigError(f"{pipe}: cannot create the answers pipe: {e.strerror}", 2) from e


def _remove_stale(pipe: Path, warn: list[str]) -> bool:
    """True when ``pipe`` was stale (nobody holds its lock) and is now gone."""
    try:
        fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # its client just finished
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Busy(f"{pipe} is a symlink, not an answers pipe: remove it") from None
        raise Busy(
            f"{pipe} exists and this user cannot check it ({e.strerror}): "
            "if no avtool sig is running, remove it"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode):
            raise Busy(f"{pipe} exists and is not a pipe: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its client is alive: busy
        age = max(0.0, time.time() - st.st_mtime)
        if _remove_if_ours(pipe, st):
            warn.append(f"{pipe}: removed a stale pipe ({age:.0f} s old; its client is gone)")
        return True
    finally:
        os.close(fd)


def _remove_if_ours(pipe: Path, st: os.stat_result) -> bool:
    """Unlink ``pipe`` only if it still is the inode ``st`` (a lock holder's own)."""
    try:
        now = os.lstat(pipe)
    except FileNotFoundError:
        return False
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        return False
    os.unlink(pipe)
    return True


# ---- the answer --------------------------------------------------------------------------------
def _read_answer(fds: _Fds, pid: int, timeout: float) -> Answer:
    fd = fds.read
    started = time.monotonic()
    until = started + timeout
    buf = b""
    lines: list[str] = []

    def answer(end: End) -> Answer:
        return Answer(tuple(lines), end, time.monotonic() - started)

    while True:
        left = until - time.monotonic()
        if left <= 0:
            return answer("timeout")
        ready, _, _ = select.select([fd], [], [], min(left, LIVENESS_S))
        if not ready:
            if not alive(pid):
                return answer("gone")
            continue
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            if buf:
                lines.append(buf.decode(errors="replace"))
            return answer("eof")
        fds.release_keep()  # the daemon holds the pipe now: its close is our EOF
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode(errors="replace")
            if line in (END_OK, END_ERROR):
                return answer("ok" if line == END_OK else "error")
            lines.append(line)
        if len(buf) > MAX_LINE:
            lines.append(buf[:200].decode(errors="replace") + "...")
            return answer("eof")
