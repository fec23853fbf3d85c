"""The floor: the least a courierfilter in plain Python does per message (bench/peers.py).

    python bench/floor.py SOCKET CLAMD_SOCKET

A measuring stick, not a filter: no path checks, no policy, no timeouts, no drain on stop.
One epoll loop, stdlib only. Per message: read the request, read each control file (a filter
needs the envelope), open the data file and pass its fd to clamd (FILDES on a pooled IDSESSION),
read the data file's first 64 KiB (the header check any filter does), log a line, answer.
Started as courierfilter starts filters: fd 3 closed when ready, stdin's EOF means stop.
"""

import contextlib
import os
import select
import socket
import sys
from dataclasses import dataclass

FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CLEAN, VIRUS, TEMPFAIL = b"200 Ok\n", b"550 5.7.1 Virus found\n", b"432 4.3.0 Temporary failure\n"


@dataclass(slots=True)
class Job:
    conn: int  # Courier's connection
    path: bytes  # the data file
    dfd: int = -1
    sock: socket.socket | None = None  # the clamd session it waits on
    reused: bool = False
    reply: bytes = b""


class Floor:
    def __init__(self, clamd: str) -> None:
        self.clamd, self.ep = clamd, select.epoll()
        self.reading: dict[int, bytes] = {}  # client fd -> its request so far
        self.scans: dict[int, Job] = {}  # clamd session fd -> its one scan in flight
        self.idle: list[socket.socket] = []  # sessions with no scan in flight

    def read(self, conn: int) -> None:
        """Read on Courier's connection; epoll brings the rest until the blank line."""
        waiting = conn in self.reading
        try:
            chunk: bytes | None = os.read(conn, 65536)
        except BlockingIOError:
            chunk = None
        except OSError:
            chunk = b""
        raw = self.reading.pop(conn, b"") + (chunk or b"")
        if chunk is None or (chunk and b"\n\n" not in raw):
            if not waiting:
                self.ep.register(conn, select.EPOLLIN)
            self.reading[conn] = raw
            return
        if waiting:
            self.ep.unregister(conn)
        if not chunk:
            os.close(conn)  # gone before the end of its request
            return
        data, *controls = raw[: raw.index(b"\n\n")].split(b"\n")
        job = Job(conn, data)
        try:
            for path in controls:
                os.lstat(path)
                fd = os.open(path, FLAGS)
                os.read(fd, 65536)
                os.close(fd)
            os.lstat(data)
            job.dfd = os.open(data, FLAGS)
            os.fstat(job.dfd)
            self.scan(job)
        except OSError as e:
            self.finish(job, TEMPFAIL, str(e).encode())

    def scan(self, job: Job, fresh: bool = False) -> None:
        """Pass the data fd on an idle session, else a new one; a reused session that fails
        (clamd closes idle ones) is replaced once."""
        reused = bool(self.idle) and not fresh
        if reused:
            s = self.idle.pop()
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.clamd)
            s.sendall(b"zIDSESSION\0")
        try:
            s.sendall(b"zFILDES\0")
            socket.send_fds(s, [b"\0"], [job.dfd])
        except OSError:
            s.close()
            if not reused:
                raise
            return self.scan(job, fresh=True)
        job.sock, job.reused, job.reply = s, reused, b""
        self.scans[s.fileno()] = job
        self.ep.register(s.fileno(), select.EPOLLIN)

    def reply(self, fd: int) -> None:
        """Read on a clamd session: b"1: fd[11]: OK\\0", b"...: Eicar-Test-Signature FOUND\\0"."""
        job = self.scans[fd]
        assert job.sock is not None
        try:
            chunk = job.sock.recv(4096)
        except OSError:
            chunk = b""
        job.reply += chunk
        if chunk and not chunk.endswith(b"\0"):
            return  # the rest comes later
        del self.scans[fd]
        self.ep.unregister(fd)
        if not chunk:
            job.sock.close()
            if not job.reused:
                return self.finish(job, TEMPFAIL, b"clamd closed the session")
            try:
                return self.scan(job, fresh=True)
            except OSError as e:
                return self.finish(job, TEMPFAIL, str(e).encode())
        answer = VIRUS if job.reply.endswith(b" FOUND\0") else TEMPFAIL
        answer = CLEAN if job.reply.endswith(b" OK\0") else answer
        if answer == TEMPFAIL:
            job.sock.close()  # after an error the session may be in any state
        else:
            self.idle.append(job.sock)
        self.finish(job, answer, job.reply.rstrip(b"\0"))

    def finish(self, job: Job, answer: bytes, note: bytes) -> None:
        if job.dfd >= 0:
            os.pread(job.dfd, 65536, 0)
            os.close(job.dfd)
        os.write(2, b"floor: " + job.path + b": " + note + b" -> " + answer)
        with contextlib.suppress(OSError):  # Courier gone: nothing to tell
            os.write(job.conn, answer)
        os.close(job.conn)

    def serve(self, path: str, fd3: bool) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener.bind(path)
        listener.listen(128)
        self.ep.register(listener.fileno(), select.EPOLLIN)
        self.ep.register(0, select.EPOLLIN)
        if fd3:
            os.close(3)  # ready: courierfilter waits for fd 3 to close (courierfilter(8))
        while True:
            for fd, _ in self.ep.poll():
                if fd in self.scans:
                    self.reply(fd)
                elif fd in self.reading:
                    self.read(fd)
                elif fd == 0:
                    if not os.read(0, 4096):  # courierfilter's stop
                        os.unlink(path)
                        return
                else:
                    while True:  # the listener
                        try:
                            conn = listener.accept()[0].detach()
                        except BlockingIOError:
                            break
                        os.set_blocking(conn, False)
                        self.read(conn)


if __name__ == "__main__":
    fd3 = os.path.lexists("/proc/self/fd/3")  # before an fd of ours can be number 3
    Floor(sys.argv[2]).serve(sys.argv[1], fd3)
