"""A real ``avtool serve --debug`` for tests: fd 3 and stdin as pipes, a temp spool, real clamd.

The daemon is started as courierfilter does it (design.md, convention 9): stdin a pipe whose EOF
stops it, fd 3 the write end of a pipe that it closes once its socket is ready.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def mail(
    body: bytes = b"Hello.\n", subject: str = "test", attachment: bytes | None = None
) -> bytes:
    """An RFC 822 message; with ``attachment``, a base64 MIME attachment."""
    import base64

    head = (
        b"Received: from client (127.0.0.1) by test.example\n"
        b"From: sender@example.com\nTo: rcpt@example.test\nSubject: " + subject.encode() + b"\n"
    )
    if attachment is None:
        return head + b"\n" + body
    encoded = base64.encodebytes(attachment)
    return (
        head + b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n\n'
        b"--b1\nContent-Type: text/plain\n\n" + body + b"\n"
        b"--b1\nContent-Type: application/octet-stream\n"
        b'Content-Disposition: attachment; filename="file.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" + encoded + b"--b1--\n"
    )


def control_text(recipients: list[str], sender: str = "sender@example.com", extra: str = "") -> str:
    """A control file as Courier's submit writes it (docs/notes/courier.md §3)."""
    lines = [f"s{sender}", "fdns; client.example.com ([::ffff:127.0.0.1])", "e", "t"]
    lines.append("M0000000000ABCDEF.0000000069000001.00001234")
    for r in recipients:
        lines += [f"r{r}", "R", "N"]
    lines += ["ORELAYCLIENT=", "OTCPREMOTEIP=::ffff:127.0.0.1", "usmtp", "E1796154536"]
    text = "\n".join(lines) + "\n"
    return text + extra


@dataclass
class Spool:
    root: Path
    counter: int = 0

    def message(
        self, data: bytes, recipients: list[str] | None = None, controls: int = 1
    ) -> tuple[Path, list[Path]]:
        """Write a data file and ``controls`` control files sharing the recipients."""
        self.counter += 1
        d = self.root / f"{100000 + self.counter}"
        d.mkdir()
        data_path = d / f"D{self.counter}"
        data_path.write_bytes(data)
        rcpts = recipients or ["rcpt@example.test"]
        per = max(1, -(-len(rcpts) // controls))
        paths = []
        for i in range(controls):
            chunk = rcpts[i * per : (i + 1) * per]
            if not chunk:
                break
            path = d / f"{self.counter}.{i}.ctl"
            path.write_text(control_text(chunk))
            paths.append(path)
        return data_path, paths


def request_bytes(data_path: Path, controls: list[Path]) -> bytes:
    return b"".join(os.fsencode(p) + b"\n" for p in [data_path, *controls]) + b"\n"


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket_path: Path
    workdir: Path
    stderr_path: Path
    ready_s: float
    spool: Spool = field(init=False)

    def ask(self, raw: bytes, timeout: float = 30.0) -> str:
        """Send raw request bytes, return the whole reply as text."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket_path))
            with contextlib.suppress(BrokenPipeError):
                s.sendall(raw)  # the daemon may answer early (a request over bounds) and close
            chunks = []
            while data := s.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def filter(self, data_path: Path, controls: list[Path]) -> str:
        return self.ask(request_bytes(data_path, controls))

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # courierfilter's way to say stop
        return self.proc.wait(timeout)


_STARTED: list[Daemon] = []


def cleanup_all() -> None:
    """Kill daemons still running and remove the temp dirs start_daemon made (session end)."""
    import shutil

    for d in _STARTED:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        shutil.rmtree(d.workdir, ignore_errors=True)
    _STARTED.clear()


def spawn_fd3(
    cmd: list[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``cmd`` as courierfilter does (stdin a pipe, fd 3 a pipe it closes when ready,
    stdout and stderr to ``log``); the process and the seconds until fd 3 closed. Kills it
    and raises RuntimeError with the log when fd 3 is not closed within ``timeout``."""
    r3, w3 = os.pipe()
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            # bash: dash takes only one-digit descriptors in a redirection
            ["bash", "-c", f'exec "$@" 3>&{w3} {w3}>&-', "bash", *cmd],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            pass_fds=(w3,),
            cwd=cwd,
            env=env,
        )
    os.close(w3)
    try:
        ready, _, _ = select.select([r3], [], [], timeout)
        closed = bool(ready) and os.read(r3, 1) == b""
        seconds = time.perf_counter() - started
    finally:
        os.close(r3)
    if not closed:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{cmd[0]} never closed fd 3:\n{log.read_text(errors='replace')}")
    return proc, seconds


def start_daemon(
    config_text: str,
    *,
    workdir: Path | None = None,
    extra_args: list[str] | None = None,
    socket_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> Daemon:
    """Start the daemon; with ``socket_path`` the config places the socket (no --socket-dir)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="avs", dir="/tmp"))
    spool_root = workdir / "spool"
    spool_root.mkdir(parents=True, exist_ok=True)
    sockets = workdir / "s"
    sockets.mkdir(exist_ok=True)
    conf = workdir / "avtool.conf"
    conf.write_text(config_text.replace("@SPOOL@", str(spool_root)))
    stderr_path = workdir / "stderr.log"
    cmd = [sys.executable, "-m", "avtool", "serve", "-f", str(conf)]
    if socket_path is None:
        cmd += ["--socket-dir", str(sockets)]
    cmd += extra_args if extra_args is not None else ["--debug"]
    proc, ready_s = spawn_fd3(cmd, stderr_path, cwd=workdir, env=env)
    where = socket_path or sockets / "avtool"
    daemon = Daemon(proc, where, workdir, stderr_path, ready_s)
    _STARTED.append(daemon)
    daemon.spool = Spool(spool_root)
    return daemon


def config_for(clamd_socket: str, extra: str = "") -> str:
    return (
        f'[clamd]\nbackends = ["{clamd_socket}"]\nscan_timeout = 10.0\nconnect_timeout = 1.0\n'
        f'retry_after = 1.0\n\n[serve]\nspool_dir = "@SPOOL@"\nmessage_timeout = 20.0\n'
        f"read_timeout = 2.0\ndrain_timeout = 10.0\n" + extra
    )
