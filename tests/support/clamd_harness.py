"""A real clamd for tests and benchmarks, on a temp dir, with the tiny DB of share/testsigs.

Importable (``ClamdServer``, ``up``, ``down``) and a script::

    python tests/support/clamd_harness.py up DIR [--stream-max 10M] [--disable-cache]
    python tests/support/clamd_harness.py down DIR

Facts used here come from docs/notes/clamav.md: clamd will not start with an empty database dir
(section 1), binds its LocalSocket after dropping to ``User clamav`` so the dir must be the
clamav user's (section 2), opens its sockets only once the DB is loaded (so PONG means ready),
and takes a while to exit on SIGTERM (wait for it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTSIGS = REPO / "share" / "testsigs"
TESTFILES = Path("/usr/share/clamav-testfiles")
STATE = "harness.json"  # in DIR: what `down` needs (pid, sockets) when run as a separate process


def ensure_installed() -> None:
    """Install Debian's clamd and test files if either is missing (needs root and apt)."""
    if shutil.which("clamd") and TESTFILES.is_dir():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "clamav-daemon", "clamav", "clamav-testfiles"],
        check=True,
        env=env,
    )


def free_port() -> int:
    """A free loopback TCP port (it can be taken again before clamd binds it: start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ClamdServer:
    """One clamd on ``dir``: LocalSocket ``dir/clamd.sock`` and TCPSocket on a loopback port."""

    dir: Path
    stream_max: str = "10M"
    max_threads: int = 4
    disable_cache: bool = False
    extra: dict[str, str] = field(default_factory=dict)  # more clamd.conf lines, name -> value
    tcp_port: int = 0
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def unix_socket(self) -> Path:
        return self.dir / "clamd.sock"

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def conf(self) -> Path:
        return self.dir / "clamd.conf"

    @property
    def db_dir(self) -> Path:
        return self.dir / "db"

    @property
    def log(self) -> Path:
        return self.dir / "clamd.log"

    # ---- files ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Write DB and clamd.conf; make everything the clamav user's when running as root."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_dir.mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        for sig in sorted(TESTSIGS.glob("*.[hn]db")):
            shutil.copyfile(sig, self.db_dir / sig.name)
        self.tcp_port = self.tcp_port or free_port()
        self.write_conf()
        self._own()

    def write_conf(self) -> None:
        lines = {
            "Foreground": "yes",
            "LocalSocket": str(self.unix_socket),
            "LocalSocketMode": "666",
            "TCPSocket": str(self.tcp_port),
            "TCPAddr": "127.0.0.1",
            "DatabaseDirectory": str(self.db_dir),
            "TemporaryDirectory": str(self.dir / "tmp"),
            "LogFile": str(self.log),
            "LogTime": "yes",
            "ScanMail": "yes",
            "ScanArchive": "yes",
            "AlertEncrypted": "yes",
            "StreamMaxLength": self.stream_max,
            "MaxThreads": str(self.max_threads),
            "SelfCheck": "0",
            # `no` stalls the first scan after RELOAD for IdleTimeout + load time
            # (docs/notes/clamav.md §2).
            "ConcurrentDatabaseReload": "yes",
        }
        if os.geteuid() == 0:
            lines["User"] = "clamav"
        if self.disable_cache:
            lines["DisableCache"] = "yes"  # the result cache makes repeat runs ~13x faster
        lines.update(self.extra)
        self.conf.write_text("".join(f"{k} {v}\n" for k, v in lines.items()))

    def _own(self) -> None:
        if os.geteuid() != 0:
            return
        pw = pwd.getpwnam("clamav")
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        os.chmod(self.dir, 0o755)  # noqa: S103 - socket dir: clamav writes it, tests traverse it
        for parent in self.dir.resolve().parents:
            if not _traversable(parent, pw.pw_uid, pw.pw_gid):
                raise RuntimeError(
                    f"clamd runs as clamav, which cannot traverse {parent} to reach {self.dir}: "
                    "use a dir below a world-traversable one (e.g. tempfile.mkdtemp(dir='/tmp'))"
                )

    def add_signature_file(self, name: str, text: str) -> Path:
        """Add (or replace) a DB file, e.g. ``extra.ndb``; clamd sees it after RELOAD."""
        path = self.db_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        self._own()
        tmp.replace(path)
        return path

    # ---- process ------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> ClamdServer:
        """Start clamd and return once it answers PING; RuntimeError with the log tail if not."""
        ensure_installed()
        for attempt in range(3):
            self.prepare()
            self.log.unlink(missing_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.unix_socket.unlink()
            with open(self.dir / "clamd.out", "wb") as out:
                self._proc = subprocess.Popen(
                    ["clamd", "-c", str(self.conf)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # `up` as a script leaves it running
                )
            self.pid = self._proc.pid
            try:
                self._wait_ready(timeout)
            except RuntimeError as e:
                self.stop()
                if "bind" in str(e) and attempt < 2:  # the free port was taken meanwhile
                    self.tcp_port = 0
                    continue
                raise
            self._save_state()
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"clamd exited with {self._proc.returncode}:\n{self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"clamd gave no PONG within {timeout:g} s:\n{self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(str(self.unix_socket))
                s.sendall(b"zPING\0")
                return s.recv(64).startswith(b"PONG")
        except OSError:
            return False

    def command(self, cmd: str, timeout: float = 10.0) -> str:
        """One raw clamd command on the unix socket (RELOAD, VERSION, ...), its reply as text."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.unix_socket))
            s.sendall(b"z" + cmd.encode() + b"\0")
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
        return b"".join(chunks).rstrip(b"\0").decode(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for path in (self.log, self.dir / "clamd.out"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM by pid, wait for the exit (SIGKILL after ``timeout``)."""
        if self.pid is None:
            return
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        elif _is_our_clamd(self.pid, self.conf):
            os.kill(self.pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while _is_our_clamd(self.pid, self.conf) and time.monotonic() < end:
                time.sleep(0.05)
            if _is_our_clamd(self.pid, self.conf):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None
        self._proc = None
        (self.dir / STATE).unlink(missing_ok=True)

    def _save_state(self) -> None:
        state = {"pid": self.pid, "tcp_port": self.tcp_port, "stream_max": self.stream_max}
        (self.dir / STATE).write_text(json.dumps(state))

    @classmethod
    def load(cls, directory: Path) -> ClamdServer:
        """The server that ``up`` left running in ``directory`` (for ``down`` elsewhere)."""
        state = json.loads((directory / STATE).read_text())
        return cls(
            directory, stream_max=state["stream_max"], tcp_port=state["tcp_port"], pid=state["pid"]
        )


def _traversable(directory: Path, uid: int, gid: int) -> bool:
    st = directory.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _is_our_clamd(pid: int, conf: Path) -> bool:
    """True while ``pid`` is a clamd started with ``conf`` (never signal a recycled pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    zombie = "\nState:\tZ" in status
    return not zombie and os.fsencode(conf) in argv


def up(directory: Path, **options: object) -> ClamdServer:
    server = ClamdServer(Path(directory), **options)  # type: ignore[arg-type]
    return server.start()


def down(directory: Path) -> None:
    try:
        server = ClamdServer.load(Path(directory))
    except FileNotFoundError:
        return
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--stream-max", default="10M", help="clamd StreamMaxLength")
    parser.add_argument("--max-threads", type=int, default=4)
    parser.add_argument("--disable-cache", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "down":
        down(args.dir)
        return 0
    server = up(
        args.dir,
        stream_max=args.stream_max,
        max_threads=args.max_threads,
        disable_cache=args.disable_cache,
    )
    print(f"clamd pid {server.pid}: unix {server.unix_socket}, tcp {server.tcp_address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
