"""``avtool sig``'s client: find the daemon, make the answers pipe, signal, read the answer.

It prints nothing (cli/sig.py does). The parts: wire.py (the signals, the answer lines, the
counters), pidfile.py (the pid file and what root believes about the process it names),
fifo.py (the answers pipe, both ends).

Root signals only the avtool daemon: the process must be ``avtool serve`` running with the pid
file owner's uid, else the request is refused as "not running" (exit 3); ``-p PID`` is checked
the same way, against the process's own uid (pidfile.check_daemon). The check is made on a
pidfd (pidfd_open(2)) opened first, and the signal goes to that pidfd, never to a recycled pid.
And the signal is sent by a child that has dropped to that uid (setgroups, setresgid,
setresuid), so even a mistake in the check can only reach a process the pid file owner could
signal anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from avtool.config import Config
from avtool.config import keys as K
from avtool.control.fifo import DEBUG_PIPE, answers_pipe, read_answer
from avtool.control.pidfile import alive, check_daemon, process_ids, read_pid_file
from avtool.control.wire import NotRunning, Response, SigError


@dataclasses.dataclass(frozen=True)
class Target:
    """Who to signal, where the answer comes, and, when root asks, the only uid the daemon may
    run as (the pid file owner's; with -p the process's own), checked and signalled as by
    ``request``. ``owner`` None: not root, the kernel lets us signal only our own processes."""

    pid: int
    pipe: Path
    owner: int | None = None


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
    owner = process_ids(pid, fallback=False)[0] if root else None
    if root and owner is None:
        raise NotRunning(f"the filter is not running: cannot read /proc/{pid}")
    return Target(pid, Path(DEBUG_PIPE), owner)


def request(where: Target, signum: int, timeout: float, warn: list[str]) -> Response:
    """Make the pipe, send ``signum``, return the answer; SigError when it cannot be asked.
    Warnings (a stale pipe removed) are appended to ``warn``."""
    with _pidfd(where.pid) as pidfd:
        if where.owner is not None:
            check_daemon(where.pid, where.owner, pidfd)
        with answers_pipe(where.pipe, where.pid, warn) as fds:
            _send(where, pidfd, signum)
            return read_answer(fds, where.pid, timeout)


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


def _send(where: Target, pidfd: int | None, signum: int) -> None:
    """Signal the process (through its pidfd when there is one); as root, from a child that has
    become ``where.owner`` first (module docstring)."""
    owner = where.owner
    if owner is None or owner == os.geteuid():
        code = _kill(where.pid, pidfd, signum)
    else:
        gid = process_ids(where.pid)[1]
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
