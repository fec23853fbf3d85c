"""Hostile input on the live filter socket: a real ``avtool serve --debug`` and a real clamd.

Each case asserts the exact kind of answer (5xx for a request that can never work, 432 for one
that a retry or a fix on this host may cure, a 432 timeout for a client that never finishes),
and then that a clean and an EICAR message are still answered right. Timeouts are small
(serve.read_timeout = 1 s) so that the whole file runs in seconds.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import selectors
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.support.serve import (
    EICAR,
    Daemon,
    config_for,
    mail,
    request_bytes,
    start_daemon,
)

pytestmark = pytest.mark.clamd

READ_TIMEOUT = 1.0
VIRUS = "550 5.7.1 Virus found: Eicar-Test-Signature"
BAD = "500 5.3.0 Malformed mail filter request: "
RETRY = "432 4.3.0 Mail filter cannot read the message: "


def hostile_config(clamd_socket: str, extra: str = "", read_timeout: float = READ_TIMEOUT) -> str:
    return config_for(clamd_socket, extra).replace(
        "read_timeout = 2.0", f"read_timeout = {read_timeout}"
    )


@pytest.fixture(scope="module")
def daemon(clamd_server: Any) -> Iterator[Daemon]:
    d = start_daemon(hostile_config(str(clamd_server.unix_socket)))
    yield d
    assert d.stop() == 0
    assert "Traceback" not in d.log()


def still_serving(d: Daemon) -> None:
    """A clean and an infected message right after: both answered as they must be."""
    assert d.filter(*d.spool.message(mail())) == "200 Ok\n"
    assert d.filter(*d.spool.message(mail(attachment=EICAR))).startswith(VIRUS)


def connect_when_accepted(path: Path, deadline: float) -> socket.socket:
    """Connect, retrying while the listen backlog is full (EAGAIN on a unix socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    while True:
        try:
            s.connect(str(path))
            return s
        except BlockingIOError:
            if time.monotonic() > deadline:
                s.close()
                raise
            time.sleep(0.01)


def talk(
    path: Path, raw: bytes, *, close_write: bool = False, timeout: float = 10.0
) -> tuple[str, float]:
    """Send ``raw`` (then, with ``close_write``, end our side); the reply and its delay."""
    started = time.monotonic()
    with connect_when_accepted(path, started + timeout) as s:
        s.settimeout(timeout)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(raw)
            if close_write:
                s.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while data := s.recv(65536):
                chunks.append(data)
    return b"".join(chunks).decode(), time.monotonic() - started


# ---- requests that are wrong in themselves ---------------------------------------------------
def spool_file(d: Daemon, name: str, data: bytes = b"x\n") -> Path:
    directory = d.spool.root / "hostile"
    directory.mkdir(exist_ok=True)
    path = directory / name
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.write_bytes(data)
    return path


def ctl(d: Daemon) -> Path:
    return d.spool.message(mail())[1][0]


def symlinked_data(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    link = data.with_name("Dlink")
    link.symlink_to(data)
    return request_bytes(link, ctls)


def symlinked_control(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    link = ctls[0].with_name("Clink")
    link.symlink_to(ctls[0])
    return request_bytes(data, [link])


def symlinked_directory(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    alias = d.spool.root / f"alias{d.spool.counter}"
    alias.symlink_to(data.parent)
    return request_bytes(alias / data.name, [alias / ctls[0].name])


def symlink_out_of_the_spool(d: Daemon) -> bytes:
    outside = d.workdir / "outside.eml"
    outside.write_bytes(mail(attachment=EICAR))
    link = d.spool.root / f"out{d.spool.counter}"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(outside)
    return request_bytes(link, [ctl(d)])


def special_file(d: Daemon, name: str, make: Callable[[Path], None]) -> bytes:
    """A request whose data file is ``name`` in the spool, made by ``make``."""
    path = d.spool.root / "hostile" / name
    path.parent.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    make(path)
    return request_bytes(path, [ctl(d)])


def fifo_data(d: Daemon) -> bytes:
    return special_file(d, "fifo", os.mkfifo)


def device_data(d: Daemon) -> bytes:
    # /dev/null's numbers: opening it would be harmless, but it must not be opened at all
    return special_file(d, "null", lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3)))


def directory_data(d: Daemon) -> bytes:
    return request_bytes(d.spool.message(mail())[0].parent, [ctl(d)])


def dotdot(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    sneaky = Path(f"{data.parent}/../{data.parent.name}/{data.name}")
    return request_bytes(sneaky, ctls)


def relative(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    return request_bytes(data.relative_to(d.workdir), [c.relative_to(d.workdir) for c in ctls])


def outside(d: Daemon) -> bytes:
    return request_bytes(Path("/etc/passwd"), [Path("/etc/shadow")])


def control_outside(d: Daemon) -> bytes:
    data, _ = d.spool.message(mail(attachment=EICAR))
    return request_bytes(data, [Path("/etc/shadow")])


def vanished(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    data.unlink()
    return request_bytes(data, ctls)


def nul_in_path(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    return os.fsencode(data) + b"\0\n" + os.fsencode(ctls[0]) + b"\n\n"


def megabyte_line(d: Daemon) -> bytes:
    return b"/" + b"a" * (1 << 20) + b"\n" + os.fsencode(ctl(d)) + b"\n\n"


def megabyte_of_lines(d: Daemon) -> bytes:
    data = os.fsencode(d.spool.message(mail())[0])
    return data + b"\n" + (b"/" + b"c" * 4000 + b"\n") * 300 + b"\n"


def crlf(d: Daemon) -> bytes:
    return request_bytes(*d.spool.message(mail(attachment=EICAR))).replace(b"\n", b"\r\n")


def not_utf8(d: Daemon) -> bytes:
    return os.fsencode(d.spool.root) + b"/\xff\xfe\n" + os.fsencode(ctl(d)) + b"\n\n"


def binary_control(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    ctls[0].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(1, 256)))
    return request_bytes(data, ctls)


def too_many_controls(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    return os.fsencode(data) + b"\n" + (os.fsencode(ctls[0]) + b"\n") * 1001 + b"\n"


def same_file_twice(d: Daemon) -> bytes:
    data, ctls = d.spool.message(mail(attachment=EICAR))
    return request_bytes(data, [ctls[0], ctls[0]])


def blank_first(d: Daemon) -> bytes:
    return b"\n" + request_bytes(*d.spool.message(mail(attachment=EICAR)))


def data_after_blank(d: Daemon) -> bytes:
    # The reply comes after the first request; what follows on the connection is never read.
    return request_bytes(*d.spool.message(mail(attachment=EICAR))) + b"/x\n/y\n\n"


def no_blank_line(d: Daemon) -> bytes:
    return request_bytes(*d.spool.message(mail()))[:-1]


# (case, request builder, close our side after sending, expected reply start)
CASES: list[tuple[str, Callable[[Daemon], bytes], bool, str]] = [
    ("no-blank-line-then-eof", no_blank_line, True, "432 4.3.0 Incomplete"),
    ("nothing-then-eof", lambda d: b"", True, "432 4.3.0 Incomplete"),
    ("megabyte-line", megabyte_line, False, BAD + "line longer"),
    ("megabyte-of-lines", megabyte_of_lines, False, BAD + "request longer"),
    ("nul-in-path", nul_in_path, False, BAD + "NUL byte"),
    ("crlf", crlf, False, BAD + "control character"),
    ("not-utf8", not_utf8, False, BAD + "path is not UTF-8"),
    ("blank-first-line", blank_first, False, BAD + "empty data"),
    ("relative-paths", relative, False, RETRY + "relative"),
    ("dotdot", dotdot, False, BAD + "path not normalised"),
    ("outside-the-spool", outside, False, RETRY + "path outside"),
    ("control-file-outside", control_outside, False, RETRY + "path outside"),
    ("symlinked-data-file", symlinked_data, False, BAD + "not a regular file (symlink)"),
    ("symlinked-control-file", symlinked_control, False, BAD + "not a regular file (symlink)"),
    ("symlinked-directory", symlinked_directory, False, BAD + "a directory in the path"),
    ("symlink-out-of-spool", symlink_out_of_the_spool, False, BAD + "not a regular file (symlink)"),
    ("fifo-as-data-file", fifo_data, False, BAD + "not a regular file (fifo)"),
    ("device-as-data-file", device_data, False, BAD + "not a regular file (character device)"),
    ("directory-as-data-file", directory_data, False, BAD + "not a regular file (directory)"),
    ("vanished-data-file", vanished, False, RETRY + "file vanished"),
    ("binary-control-file", binary_control, False, "500 5.3.0 Unusable control file: binary junk"),
    ("1001-control-files", too_many_controls, False, BAD + "more than 1000"),
    ("same-file-twice", same_file_twice, False, BAD + "the same file"),
    ("data-after-the-blank-line", data_after_blank, False, VIRUS),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "close_write", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request_gets_its_answer_and_the_daemon_goes_on(
    daemon: Daemon, build: Callable[[Daemon], bytes], close_write: bool, expected: str
) -> None:
    if build is device_data and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    reply, took = talk(daemon.socket_path, build(daemon), close_write=close_write)
    assert reply.startswith(expected), reply
    assert reply.count("\n") == 1 and reply.endswith("\n")
    assert took < READ_TIMEOUT + 3.0  # answered, not left to time out
    assert daemon.proc.poll() is None
    still_serving(daemon)  # fmt: skip


def test_no_blank_line_and_no_eof_times_out(daemon: Daemon) -> None:
    """A request that never ends: 432 once serve.read_timeout has passed, then the close."""
    raw = request_bytes(*daemon.spool.message(mail(attachment=EICAR)))[:-1]
    reply, took = talk(daemon.socket_path, raw)
    assert reply == "432 4.3.0 Timeout reading the filter request\n"
    assert READ_TIMEOUT - 0.1 <= took < READ_TIMEOUT + 2.5
    still_serving(daemon)


def test_a_slow_drip_does_not_extend_the_read_timeout(daemon: Daemon) -> None:
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.socket_path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(int(READ_TIMEOUT * 10) + 20):  # one byte per 0.1 s, past the limit
                s.send(b"/")
                time.sleep(0.1)
                readable, _, _ = select.select([s], [], [], 0)
                if readable:
                    break
        reply = s.recv(200).decode()
    assert reply == "432 4.3.0 Timeout reading the filter request\n"
    assert time.monotonic() - started < READ_TIMEOUT + 2.5
    still_serving(daemon)


def test_a_thousand_control_files_are_read(daemon: Daemon) -> None:
    """1,000 control files (the limit; Courier splits big recipient lists over several): all
    read, and the reply names the virus; a clean one with as many passes."""
    rcpts = [f"user{i}@example.test" for i in range(1000)]
    data, ctls = daemon.spool.message(mail(attachment=EICAR), rcpts, controls=1000)
    assert len(ctls) == 1000
    reply, took = talk(daemon.socket_path, request_bytes(data, ctls))
    assert reply.startswith(VIRUS), reply
    data, ctls = daemon.spool.message(mail(), rcpts, controls=1000)
    assert daemon.filter(data, ctls) == "200 Ok\n"
    line = next(x for x in reversed(daemon.log().splitlines()) if "verdict=clean" in x)
    assert "rcpts=1000" in line
    still_serving(daemon)


# ---- idle and many clients ------------------------------------------------------------------
def test_idle_clients_do_not_hold_scan_slots(clamd_server: Any) -> None:
    """serve.max_scans = 2 and five clients that connect and send nothing: a clean and an
    infected message sent together are both answered while every idle client still waits
    (none has its timeout reply yet), and each idle client gets its 432 afterwards."""
    read_timeout = 3.0
    conf = hostile_config(str(clamd_server.unix_socket), "max_scans = 2\n", read_timeout)
    d = start_daemon(conf)
    try:
        idle = []
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket_path))
            idle.append(s)
        time.sleep(0.2)  # every idle one accepted and waiting for its request
        jobs = {"clean": d.spool.message(mail()), "virus": d.spool.message(mail(attachment=EICAR))}
        results: dict[str, str] = {}

        def send(name: str) -> None:
            results[name] = d.filter(*jobs[name])

        threads = [threading.Thread(target=send, args=(name,)) for name in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        waiting, _, _ = select.select(idle, [], [], 0)
        assert waiting == []  # answered before any idle client's read timeout
        assert results["clean"] == "200 Ok\n" and results["virus"].startswith(VIRUS), results
        for s in idle:
            s.settimeout(read_timeout + 3)
            assert s.recv(200) == b"432 4.3.0 Timeout reading the filter request\n"
            s.close()
        still_serving(d)
    finally:
        assert d.stop() == 0


def test_idle_clients_beyond_the_reader_threads_do_not_delay_mail(clamd_server: Any) -> None:
    """serve.max_connections = 16 and 48 clients that connect and send nothing, with a 30 s
    read timeout: a clean and an infected message are still answered while every idle client
    waits. A client still sending costs the loop an entry and a timer, not a thread
    (avtool/daemon/loop.py); the loop holds max_connections + 512 connections before it stops
    accepting."""
    conf = hostile_config(str(clamd_server.unix_socket), "max_connections = 16\n", 30.0)
    d = start_daemon(conf)
    idle = []
    try:
        for _ in range(48):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket_path))
            idle.append(s)
        clean = d.spool.message(mail())
        virus = d.spool.message(mail(attachment=EICAR))
        assert talk(d.socket_path, request_bytes(*clean), timeout=20)[0] == "200 Ok\n"
        assert talk(d.socket_path, request_bytes(*virus), timeout=20)[0].startswith(VIRUS)
        waiting, _, _ = select.select(idle, [], [], 0)
        assert waiting == []  # every idle client is still waiting for its timeout
        assert "no complete request" not in d.log()
    finally:
        for s in idle:
            s.close()
        assert d.stop() == 0
    assert "Traceback" not in d.log()


@pytest.mark.parametrize("infected", [False, True])
def test_a_request_in_two_late_parts_is_read_and_answered(daemon: Daemon, infected: bool) -> None:
    """Half the request, a pause (the loop waits for the rest in epoll), then the rest:
    scanned and answered as if it had come at once."""
    raw = request_bytes(*daemon.spool.message(mail(attachment=EICAR if infected else None)))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(daemon.socket_path))
        s.sendall(raw[: len(raw) // 2])
        time.sleep(0.6)
        s.sendall(raw[len(raw) // 2 :])
        reply = s.recv(1000).decode()
    assert reply.startswith(VIRUS) if infected else reply == "200 Ok\n"


def test_500_concurrent_connections(clamd_server: Any) -> None:
    """500 connections open at once: 400 send a message (every tenth infected), 50 garbage, 50
    nothing. Each gets its own right answer: 200 or 550, 500, or 432 after the read timeout
    (or, for all, a 432 busy); a clean and an infected message sent meanwhile are answered."""
    d = start_daemon(hostile_config(str(clamd_server.unix_socket), "max_scans = 2\n"))
    kinds: list[str] = []
    raw: list[bytes] = []
    for i in range(500):
        if i % 10 == 3:
            kinds.append("garbage")
            raw.append(b"\0garbage\n\n")
        elif i % 10 == 7:
            kinds.append("idle")
            raw.append(b"")
        else:
            kinds.append("virus" if i % 10 == 0 else "clean")
            message = mail(attachment=EICAR) if i % 10 == 0 else mail()
            raw.append(request_bytes(*d.spool.message(message)))
    expected = {
        "clean": "200 Ok\n",
        "virus": VIRUS,
        "garbage": BAD + "NUL byte",
        "idle": "432 4.3.0 Timeout reading the filter request\n",
    }
    side: dict[str, str] = {}
    side_clean = d.spool.message(mail())
    side_virus = d.spool.message(mail(attachment=EICAR))

    def meanwhile() -> None:
        time.sleep(0.5)
        side["clean"] = talk(d.socket_path, request_bytes(*side_clean), timeout=30)[0]
        side["virus"] = talk(d.socket_path, request_bytes(*side_virus), timeout=30)[0]

    sel = selectors.DefaultSelector()
    replies: dict[int, bytes] = {}
    socks: list[socket.socket] = []
    helper = threading.Thread(target=meanwhile)
    started = time.monotonic()
    try:
        helper.start()
        for i, data in enumerate(raw):
            s = connect_when_accepted(d.socket_path, deadline=time.monotonic() + 30)
            if data:
                s.sendall(data)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            socks.append(s)
            replies[i] = b""
        open_ = set(range(len(raw)))
        deadline = time.monotonic() + 60
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                i = key.data
                try:
                    chunk = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except (BlockingIOError, ConnectionResetError):
                    chunk = b""
                if chunk:
                    replies[i] += chunk
                else:
                    sel.unregister(key.fileobj)
                    open_.discard(i)
        took = time.monotonic() - started
        helper.join(30)
    finally:
        for s in socks:
            s.close()
        sel.close()
    assert not open_, f"{len(open_)} connections never closed"
    busy = 0
    for i, kind in enumerate(kinds):
        reply = replies[i].decode()
        if reply.startswith("432 4.3.2 Virus scanner busy"):
            busy += 1
            continue
        assert reply.startswith(expected[kind]), (i, kind, reply)
    assert busy == 0  # message_timeout 20 s: nothing should have waited that long
    assert side["clean"] == "200 Ok\n" and side["virus"].startswith(VIRUS), side
    assert took < 60
    still_serving(d)
    assert d.stop() == 0
    assert "Traceback" not in d.log()


# ---- random requests on the live socket -----------------------------------------------------
JUNK = [b"\n", b"\n\n", b"\0", b"\r\n", b"/..", b"//", b"\xff", b"x" * 5000, b" "]


@st.composite
def live_requests(draw: st.DrawFn, whole: list[bytes]) -> bytes:
    """A real request (real spool paths), as it is or with junk put in, or cut anywhere; or
    lines of real requests mixed with junk."""
    if draw(st.booleans()):
        raw = draw(st.sampled_from(whole))
        at = draw(st.integers(0, len(raw)))
        how = draw(st.sampled_from(["as is", "insert", "cut"]))
        if how == "insert":
            raw = raw[:at] + draw(st.sampled_from(JUNK) | st.binary(max_size=20)) + raw[at:]
        return raw[:at] if how == "cut" else raw
    lines = [line + b"\n" for raw in whole for line in raw.split(b"\n") if line]
    pieces = st.sampled_from(lines + JUNK) | st.binary(max_size=40)
    return b"".join(draw(st.lists(pieces, max_size=8)))


def test_random_requests_each_get_one_reply_line(daemon: Daemon) -> None:
    whole = [request_bytes(*daemon.spool.message(m)) for m in (mail(), mail(attachment=EICAR))]
    reply_line = re.compile(r"(200 Ok|550 5\.7\.1 [ -~]*|4\d\d [ -~]*|5\d\d [ -~]*)\n")

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(live_requests(whole))
    def check(raw: bytes) -> None:
        reply, took = talk(daemon.socket_path, raw, close_write=True)
        assert reply_line.fullmatch(reply), (raw[:200], reply)
        event(reply[:3])
        assert took < READ_TIMEOUT + 3.0

    check()
    assert daemon.proc.poll() is None
    still_serving(daemon)


def test_out_of_descriptors_the_loop_pauses_instead_of_spinning(clamd_server: Any) -> None:
    """accept() fails with EMFILE while idle clients hold every descriptor: the loop stops
    watching the (still readable) listener for a while instead of waking and logging an error
    in a tight loop, and accepts again once descriptors are free."""
    import resource

    # read_timeout 30 s: no idle client is answered (freeing its descriptor) during the test
    d = start_daemon(hostile_config(str(clamd_server.unix_socket), read_timeout=30.0))
    try:
        open_fds = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        limit = open_fds + 20
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
        idle = [socket.socket(socket.AF_UNIX) for _ in range(40)]
        for s in idle:
            s.connect(str(d.socket_path))  # the backlog takes what the daemon cannot accept
        deadline = time.monotonic() + 10
        while "accept: " not in d.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        first = d.log().count("accept: ")
        assert first >= 1  # out of descriptors
        time.sleep(1.5)
        errors = d.log().count("accept: ") - first
        assert 1 <= errors <= 5, errors  # one per pause of 0.5 s, not one per wake
        for s in idle:
            s.close()
        # The idle ones are gone (EOF): their descriptors are freed as the loop sees it. Wait
        # for that: sent at once, the message races the last of them for the descriptors.
        until = time.monotonic() + 10
        while len(os.listdir(f"/proc/{d.proc.pid}/fd")) > open_fds and time.monotonic() < until:
            time.sleep(0.05)
        data, ctls = d.spool.message(mail())
        assert d.filter(data, ctls) == "200 Ok\n"
    finally:
        assert d.stop() == 0


def test_work_for_the_threads_is_bounded(tmp_path: Path) -> None:
    """A clamd reached by INSTREAM (the blocking way, in worker threads) that hangs, one worker,
    and 600 clients that each send a whole request: the loop holds at most max_connections +
    512 of them (queued for the workers included); the rest wait in the kernel's backlog
    instead of piling up in the daemon."""
    from tests.fakes.clamd import FakeClamd
    from tests.support.serve import Spool

    sockdir = Path(tempfile.mkdtemp(prefix="avq", dir="/tmp"))
    with FakeClamd(sockdir / "hang.sock", "hang") as hang:
        conf = hostile_config(hang.address, "max_connections = 1\n", read_timeout=30.0)
        conf = conf.replace("[clamd]\n", '[clamd]\ntransfer = "instream"\n')
        d = start_daemon(conf)
        clients: list[socket.socket] = []
        try:
            spool: Spool = d.spool
            requests = [request_bytes(*spool.message(mail())) for _ in range(600)]
            for raw in requests:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(d.socket_path))
                s.sendall(raw)
                clients.append(s)
            time.sleep(2.0)
            held = sum(
                os.readlink(f"/proc/{d.proc.pid}/fd/{fd}").startswith("socket:")
                for fd in os.listdir(f"/proc/{d.proc.pid}/fd")
            )
            assert held <= 1 + 512 + 8, held  # + the listener, clamd's and a few of our own
            assert held >= 400, held  # it did take what it may
        finally:
            for s in clients:
                s.close()
            d.proc.kill()
            d.proc.wait()
    shutil.rmtree(sockdir, ignore_errors=True)


def test_a_full_loop_accepts_again_as_the_workers_catch_up() -> None:
    """The same bound with one worker and a clamd that answers each stream OK after 5 ms:
    every one of 1,000 messages sent at once is answered (a worker done wakes the loop that
    stopped accepting when it held 513; the other clients wait in connect() meanwhile)."""
    from tests.fakes.clamd import FakeClamd

    sockdir = Path(tempfile.mkdtemp(prefix="avq", dir="/tmp"))
    with FakeClamd(sockdir / "slow.sock", reply=b"stream: OK\0", delay=0.005) as slow:
        conf = hostile_config(slow.address, "max_connections = 1\n", read_timeout=60.0)
        d = start_daemon(conf.replace("[clamd]\n", '[clamd]\ntransfer = "instream"\n'))
        clients: list[socket.socket] = []
        # A unix connect() with a timeout fails at once when the backlog is full: block, and
        # let a watchdog end a daemon that never accepts again (the connect then fails).
        watchdog = threading.Timer(60, d.proc.kill)
        watchdog.start()
        try:
            for _ in range(1000):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(d.socket_path))
                s.settimeout(30)
                s.sendall(request_bytes(*d.spool.message(mail())))
                clients.append(s)
            replies = [s.recv(100) for s in clients]
            assert set(replies) == {b"200 Ok\n"}
        finally:
            watchdog.cancel()
            for s in clients:
                s.close()
            assert d.stop() == 0
    shutil.rmtree(sockdir, ignore_errors=True)
