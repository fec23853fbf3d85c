"""The daemon's pid file, and what ``avtool sig`` may believe about the process it names.

The pid file is written by the daemon's user (courier), who could name any process in it
(sshd: SIGHUP/USR1/USR2 end most programs). So root signals only a process that is
``avtool serve`` (``is_avtool_serve``, its /proc/PID/cmdline) running with the pid file owner's
uid (real, effective, saved: /proc/PID/status; ``check_daemon``). Neither the pid file nor the
answers pipe is made in a directory that others can write (``unsafe_dir``).
"""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import stat
from pathlib import Path

from avtool.control.wire import NotRunning
from avtool.errors import DaemonError
from avtool.safedir import others_can_write

DAEMON_GROUP = "courier"  # when the daemon's ids cannot be read from /proc


def unsafe_dir(path: Path, trusted: tuple[int, ...] = ()) -> str | None:
    """Why the directory holding ``path`` is no place for a pid file or the answers pipe, or
    None: others could put a file, link or fifo of their own under the name between our checks
    and our use (safedir.others_can_write, the rule ``scan --move-to`` uses too). ``trusted``:
    more owners to accept besides root and us (``sig`` accepts the daemon's user: it writes
    the answer anyway)."""
    parent = path.parent
    try:
        st = os.stat(parent)
    except OSError:
        return None  # creating the file fails then, with its own error
    return others_can_write(st, str(parent), trusted)


class PidFile:
    """A pid file created with O_EXCL|O_NOFOLLOW: never through a symlink, never over a live
    daemon's file, never in a directory that others can write (``unsafe_dir``). A stale one
    (its process gone) is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = False

    def create(self) -> None:
        problem = unsafe_dir(self.path)
        if problem is not None:
            raise DaemonError(f"{self.path}: refusing to write the pid file: {problem}")
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                owner = read_pid(self.path)
                if owner is not None and alive(owner):
                    msg = f"{self.path}: avtool is already running as pid {owner}"
                    raise DaemonError(msg) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # stale: its process is gone
                continue
            except OSError as e:
                raise DaemonError(f"{self.path}: cannot create pid file: {e.strerror}") from e
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.created = True
            return
        raise DaemonError(f"{self.path}: another process keeps creating this pid file")

    def remove(self) -> None:
        if self.created and read_pid(self.path) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.created = False


def read_pid(path: Path) -> int | None:
    found = read_pid_file(path)
    return None if found is None else found[0]


def read_pid_file(path: Path) -> tuple[int, int] | None:
    """The pid a pid file names and the uid that owns the file (read from the same open file:
    whoever wrote it vouches for it, and ``avtool sig`` as root acts only as that user)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        text = f.read(32).strip()
    return (int(text), st.st_uid) if text.isdigit() and int(text) > 0 else None


# ---- the process it names -----------------------------------------------------------------------
def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (a zombie passes kill -0: docs/notes/courier.md §7)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def process_ids(pid: int, *, fallback: bool = True) -> tuple[int | None, int | None]:
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


def check_daemon(pid: int, owner: int, pidfd: int | None) -> None:
    """Refuse (exit 3, as "not running") unless ``pid`` is ``avtool serve`` run by ``owner``
    (module docstring). Made on a pidfd opened before /proc was read, confirmed alive after:
    a pid is not reused while its process exists, so what was read is the process the pidfd
    names (client.py signals that pidfd, never a recycled pid)."""
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
    if uids != {owner}:
        raise NotRunning(
            f"the filter is not running: process {pid} ({shown}) runs as uid "
            f"{','.join(map(str, sorted(uids))) or '?'}, not as uid {owner} "
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
