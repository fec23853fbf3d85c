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
    """A control file as Courier's submit writes it (notes/courier.md §3)."""
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


def start_daemon(
    config_text: str,
    *,
    workdir: Path | None = None,
    extra_args: list[str] | None = None,
    socket_path: Path | None = None,
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
    r3, w3 = os.pipe()
    started = time.monotonic()
    cmd = [sys.executable, "-m", "avtool", "serve", "-f", str(conf)]
    if socket_path is None:
        cmd += ["--socket-dir", str(sockets)]
    cmd += extra_args if extra_args is not None else ["--debug"]
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3>&{w3} {w3}>&-', "bash", *cmd],
            stdin=subprocess.PIPE,
            stdout=err,
            stderr=err,
            pass_fds=(w3,),
            cwd=workdir,
        )
    os.close(w3)
    ready, _, _ = select.select([r3], [], [], 20.0)
    closed = bool(ready) and os.read(r3, 1) == b""
    os.close(r3)
    if not closed:
        proc.kill()
        raise RuntimeError(f"daemon never closed fd 3:\n{stderr_path.read_text()}")
    where = socket_path or sockets / "avtool"
    daemon = Daemon(proc, where, workdir, stderr_path, time.monotonic() - started)
    _STARTED.append(daemon)
    daemon.spool = Spool(spool_root)
    return daemon


def config_for(clamd_socket: str, extra: str = "") -> str:
    return (
        f'[clamd]\nbackends = ["{clamd_socket}"]\nscan_timeout = 10.0\nconnect_timeout = 1.0\n'
        f'retry_after = 1.0\n\n[serve]\nspool_dir = "@SPOOL@"\nmessage_timeout = 20.0\n'
        f"read_timeout = 2.0\ndrain_timeout = 10.0\n" + extra
    )
