"""``avtool serve --debug`` against a real clamd: lifecycle, verdicts, actions, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import (
    EICAR,
    Daemon,
    Spool,
    config_for,
    mail,
    start_daemon,
)

pytestmark = pytest.mark.clamd


@pytest.fixture
def make_daemon(clamd_server: Any) -> Iterator[Any]:
    started: list[Daemon] = []

    def make(extra: str = "", **kw: Any) -> Daemon:
        d = start_daemon(config_for(str(clamd_server.unix_socket), extra), **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    d: Daemon = make_daemon()
    return d


def test_ready_socket_is_0660_and_stdin_eof_stops_cleanly(daemon: Daemon) -> None:
    mode = os.stat(daemon.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    assert not (daemon.socket_path.parent / ".avtool").exists()
    assert daemon.stop() == 0
    assert not daemon.socket_path.exists()
    assert "Traceback" not in daemon.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT])
def test_stop_signals_stop_cleanly(daemon: Daemon, signum: int) -> None:
    daemon.proc.send_signal(signum)
    assert daemon.proc.wait(20) == 0
    assert not daemon.socket_path.exists()


def test_clean_mail_is_accepted_untouched(daemon: Daemon) -> None:
    data, ctl = daemon.spool.message(mail())
    before = data.read_bytes()
    assert daemon.filter(data, ctl) == "200 Ok\n"
    assert data.read_bytes() == before
    line = next(x for x in daemon.log().splitlines() if "verdict=clean" in x)
    assert "from=<sender@example.com>" in line and "rcpts=1" in line and "reply=200" in line


def test_eicar_attachment_is_rejected_with_its_name(daemon: Daemon) -> None:
    data, ctl = daemon.spool.message(mail(attachment=EICAR))
    reply = daemon.filter(data, ctl)
    assert reply.startswith("550 5.7.1 Virus found: Eicar-Test-Signature")
    assert reply.endswith("\n") and reply.count("\n") == 1
    assert "action=reject" in daemon.log()


def test_drop_marks_every_recipient_in_every_control_file(make_daemon: Any) -> None:
    d: Daemon = make_daemon('\n[policy]\ninfected = "drop"\n')
    rcpts = ["a@example.test", "b@example.test", "c@example.test"]
    data, ctls = d.spool.message(mail(attachment=EICAR), rcpts, controls=2)
    assert len(ctls) == 2
    assert d.filter(data, ctls) == "200 Ok\n"
    marked = 0
    for ctl in ctls:
        text = ctl.read_text()
        n_rcpts = text.count("\nr")
        for n in range(n_rcpts):
            assert f"\nI{n} R 250 Ok - dropped by avtool" in text
            assert f"\nS{n} " in text
            marked += 1
    assert marked == 3


def test_pass_recipient_keeps_the_message_others_dropped(make_daemon: Any) -> None:
    d: Daemon = make_daemon('\n[policy]\ninfected = "reject"\npass_recipients = ["postmaster@*"]\n')
    data, ctls = d.spool.message(mail(attachment=EICAR), ["a@example.test", "postmaster@x.test"])
    assert d.filter(data, ctls) == "200 Ok\n"
    text = ctls[0].read_text()
    assert "\nS0 " in text and "\nS1 " not in text
    assert b"X-Virus-Status: Infected (Eicar-Test-Signature" in data.read_bytes()


def test_quarantine_keeps_data_envelope_and_verdict_privately(make_daemon: Any) -> None:
    d0: Daemon = make_daemon()
    qdir = d0.workdir / "quarantine"
    d0.stop()
    d: Daemon = make_daemon(f'\n[policy]\ninfected = "quarantine"\nquarantine_dir = "{qdir}"\n')
    data, ctls = d.spool.message(mail(attachment=EICAR))
    original = data.read_bytes()
    assert d.filter(data, ctls).startswith("200 ")
    (entry,) = list(qdir.iterdir())
    assert stat.S_IMODE(entry.stat().st_mode) == 0o700
    assert (entry / "data").read_bytes() == original
    assert (entry / "control.0").read_text().startswith("ssender@example.com")
    info = json.loads((entry / "verdict.json").read_text())
    assert info["verdict"] == "Infected" and info["names"][0].startswith("Eicar")
    for f in entry.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert "\nS0 " in ctls[0].read_text()


def test_pass_adds_header_and_renames_forged_one(make_daemon: Any) -> None:
    d: Daemon = make_daemon('\n[policy]\ninfected = "pass"\n')
    forged = mail(attachment=EICAR).replace(b"Subject:", b"X-Virus-Status: Clean\nSubject:", 1)
    data, ctls = d.spool.message(forged)
    mode = stat.S_IMODE(data.stat().st_mode)
    assert d.filter(data, ctls) == "200 Ok\n"
    head = data.read_bytes().split(b"\n\n", 1)[0]
    assert b"X-Virus-Status: Infected (Eicar-Test-Signature" in head
    assert b"\nX-Virus-Status: Clean" not in head
    assert b"Old-X-Virus-Status: Clean" in head or b"X-Old-X-Virus-Status: Clean" in head
    assert stat.S_IMODE(data.stat().st_mode) == mode


FORGED = b"X-Virus-Status: Clean\nX-Virus-Flag: NO\nx-virus-scanner: none\nSubject:"


@pytest.mark.parametrize(
    ("extra", "auth"),
    [
        ("skip_relay_clients = true", ""),  # support/serve.py's control files: RELAYCLIENT set
        ("skip_authenticated = true", "ialice\n"),
        ("", ""),  # scanned, clean
    ],
)
def test_every_forged_x_virus_field_is_renamed_exempt_mail_too(
    make_daemon: Any, extra: str, auth: str
) -> None:
    """A sender forges X-Virus-Status: Clean (and fields of other scanners) on mail that
    avtool does not scan: a recipe trusting X-Virus-* must still see only avtool's."""
    d: Daemon = make_daemon(f"\n[policy]\n{extra}\n")
    data, ctls = d.spool.message(
        mail(attachment=EICAR if extra else None).replace(b"Subject:", FORGED, 1)
    )
    if auth:
        ctls[0].write_text(ctls[0].read_text().replace("ORELAYCLIENT=\n", auth))
    before = ctls[0].read_text()
    assert d.filter(data, ctls) == "200 Ok\n"
    head = data.read_bytes().split(b"\n\n", 1)[0]
    fields = [line for line in head.split(b"\n") if line.lower().startswith(b"x-virus-")]
    assert fields == []
    assert b"\nOld-X-Virus-Status: Clean\nOld-X-Virus-Flag: NO\nOld-x-virus-scanner: none\n" in head
    assert ctls[0].read_text() == before
    assert "verdict=not scanned" in d.log() if extra else "verdict=clean" in d.log()


def test_exempt_mail_without_such_fields_is_not_rewritten(make_daemon: Any) -> None:
    d: Daemon = make_daemon("\n[policy]\nskip_relay_clients = true\n")
    data, ctls = d.spool.message(mail(body=b"X-Virus-Status: Clean in the body\n"))
    inode = data.stat().st_ino
    assert d.filter(data, ctls) == "200 Ok\n"
    assert data.stat().st_ino == inode  # the rewrite replaces the file: it did not happen


def test_clean_header_when_configured(make_daemon: Any) -> None:
    d: Daemon = make_daemon("\n[headers]\nclean = true\n")
    data, ctls = d.spool.message(mail())
    assert d.filter(data, ctls) == "200 Ok\n"
    head = data.read_bytes().split(b"\n\n", 1)[0]
    assert b"X-Virus-Status: Clean" in head and b"X-Virus-Scanned: avtool" in head


def test_oversize_is_unchecked_and_passed_with_header(make_daemon: Any) -> None:
    d: Daemon = make_daemon('\n[scan]\nmax_size = "1K"\n')
    data, ctls = d.spool.message(mail(body=b"x" * 4000 + b"\n"))
    assert d.filter(data, ctls) == "200 Ok\n"
    assert b"X-Virus-Status: Unchecked (too large" in data.read_bytes()


def test_dry_run_changes_nothing(make_daemon: Any) -> None:
    d: Daemon = make_daemon('dry_run = true\n\n[policy]\ninfected = "drop"\n')
    data, ctls = d.spool.message(mail(attachment=EICAR))
    before = (data.read_bytes(), ctls[0].read_text())
    assert d.filter(data, ctls) == "200 Ok\n"
    assert (data.read_bytes(), ctls[0].read_text()) == before
    assert "action=would drop" in d.log()


def test_clamd_down_defers(make_daemon: Any, tmp_path: Path) -> None:
    d: Daemon = make_daemon()
    d.stop()
    conf = config_for(str(tmp_path / "no-clamd.sock"))
    down = start_daemon(conf)
    try:
        data, ctls = down.spool.message(mail(attachment=EICAR))
        assert down.filter(data, ctls).startswith("432 4.7.1 ")
    finally:
        down.stop()


@pytest.mark.parametrize(
    ("make_request", "first_digit"),
    [
        (lambda d: b"/etc/passwd\n/etc/hostname\n\n", "45"),  # outside the spool
        (lambda d: os.fsencode(d.spool.root) + b"/../x/D1\n/y\n\n", "5"),  # ..
        (lambda d: b"relative/D1\nrelative/C1\n\n", "45"),
        (
            lambda d: (
                os.fsencode(d.spool.root)
                + b"/nope/D1\n"
                + os.fsencode(d.spool.root)
                + b"/nope/C1\n\n"
            ),
            "4",
        ),
        (lambda d: b"\0\n\n", "5"),
        (lambda d: b"x" * 1_000_000 + b"\n\n", "5"),
    ],
    ids=["outside", "dotdot", "relative", "missing", "nul", "long-line"],
)
def test_bad_requests_get_a_reply_and_the_daemon_lives(
    daemon: Daemon, make_request: Any, first_digit: str
) -> None:
    reply = daemon.ask(make_request(daemon))
    assert reply[:1] in first_digit, reply
    assert reply[3:4] == " "
    data, ctl = daemon.spool.message(mail())
    assert daemon.filter(data, ctl) == "200 Ok\n"  # still serving


def test_symlinked_data_file_is_refused(daemon: Daemon) -> None:
    data, ctl = daemon.spool.message(mail(attachment=EICAR))
    link = data.with_name("Dlink")
    link.symlink_to(data)
    reply = daemon.filter(link, ctl)
    assert reply[:1] in "45" and not reply.startswith("200"), reply


def test_silent_client_does_not_hold_a_slot(make_daemon: Any) -> None:
    d: Daemon = make_daemon("max_scans = 1\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(d.socket_path))
        data, ctl = d.spool.message(mail())
        started = time.monotonic()
        assert d.filter(data, ctl) == "200 Ok\n"
        assert time.monotonic() - started < 1.5  # served while the idle one still waits
        idle.settimeout(10)
        assert idle.recv(100).startswith(b"432 ")  # read_timeout = 2 s


def test_started_by_hand_without_fd3_refuses(clamd_server: Any, tmp_path: Path) -> None:
    conf = tmp_path / "avtool.conf"
    conf.write_text(config_for(str(clamd_server.unix_socket)).replace("@SPOOL@", str(tmp_path)))
    result = subprocess.run(
        [sys.executable, "-m", "avtool", "serve", "-f", str(conf), "--socket-dir", str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "fd 3 is not open" in result.stderr and "--debug" in result.stderr
    assert not (tmp_path / "avtool").exists()
    assert "Traceback" not in result.stderr


def test_many_concurrent_messages_all_get_the_right_verdict(daemon: Daemon) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for i in range(60):
        infected = i % 5 == 0
        jobs.append((infected, daemon.spool.message(mail(attachment=EICAR if infected else None))))
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda j: daemon.filter(*j[1]), jobs))
    for (infected, _), reply in zip(jobs, replies, strict=True):
        assert reply.startswith("550 " if infected else "200 "), reply


def test_courier_socket_dirs_and_pid_file(clamd_server: Any, tmp_path: Path) -> None:
    """As courierfilter starts it (not --debug): socket in <courier_dir>/<filter_dir>, a stale
    one of the same name in the other dir removed, a pid file while it runs."""
    state = Path(tempfile.mkdtemp(prefix="avc", dir="/tmp"))
    (state / "filters").mkdir()
    (state / "allfilters").mkdir()
    (state / "allfilters" / "avtool").write_text("stale")
    pid_file = state / "avtool.pid"
    extra = f'courier_dir = "{state}"\nfilter_dir = "filters"\npid_file = "{pid_file}"\n'
    d = start_daemon(
        config_for(str(clamd_server.unix_socket), extra),
        extra_args=[],
        socket_path=state / "filters" / "avtool",
    )
    try:
        assert stat.S_ISSOCK(os.stat(state / "filters" / "avtool").st_mode)
        assert not (state / "allfilters" / "avtool").exists()
        assert pid_file.read_text().strip() == str(d.proc.pid)
        data, ctl = d.spool.message(mail())
        assert d.filter(data, ctl) == "200 Ok\n"
    finally:
        assert d.stop() == 0
    assert not pid_file.exists()
    # Under courierfilter the socket stays, refusing: Courier answers 432. Without it Courier
    # would pass mail unfiltered (docs/notes/courier.md §3); filterctl stop removes it.
    left = state / "filters" / "avtool"
    assert stat.S_ISSOCK(os.stat(left).st_mode)
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(ConnectionRefusedError):
        s.connect(str(left))
    shutil.rmtree(state)


@pytest.mark.parametrize("behaviour", ["hang", "garbage", "mid_reply"])
def test_misbehaving_clamd_defers_within_the_deadline(behaviour: str) -> None:
    from tests.fakes.clamd import FakeClamd

    work = Path(tempfile.mkdtemp(prefix="avf", dir="/tmp"))
    with FakeClamd(work / "fake.sock", behaviour) as fake:
        conf = config_for(fake.address).replace("scan_timeout = 10.0", "scan_timeout = 1.0")
        d = start_daemon(conf.replace("message_timeout = 20.0", "message_timeout = 2.0"))
        try:
            data, ctl = d.spool.message(mail())
            started = time.monotonic()
            reply = d.filter(data, ctl)
            assert reply.startswith("432 "), reply
            assert time.monotonic() - started < 4.0
        finally:
            assert d.stop() == 0
    shutil.rmtree(work)


def test_stop_refuses_first_and_drains_messages_in_flight() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.fakes.clamd import FakeClamd

    work = Path(tempfile.mkdtemp(prefix="avf", dir="/tmp"))
    with FakeClamd(work / "fake.sock", "hang") as fake:
        conf = config_for(fake.address).replace("scan_timeout = 10.0", "scan_timeout = 1.5")
        d = start_daemon(conf)
        data, ctl = d.spool.message(mail())
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(d.filter, data, ctl)
            time.sleep(0.5)  # the scan is in flight, clamd silent
            d.proc.stdin.close()  # type: ignore[union-attr]
            time.sleep(0.3)
            # refused before the drain, the socket kept (no socket: Courier passes mail unfiltered)
            assert d.socket_path.exists()
            with pytest.raises(ConnectionRefusedError):
                d.ask(b"")
            assert pending.result(10).startswith("432 ")  # answered, not cut off
        assert d.proc.wait(10) == 0
        assert not d.socket_path.exists()  # --debug tidies up at the end
    shutil.rmtree(work)


@pytest.mark.parametrize("transfer", ["unix", "tcp"])
def test_a_log_line_that_cannot_be_written_still_gets_the_verdict(
    clamd_server: Any, transfer: str
) -> None:
    """stderr (syslog, under courierfilter) gone: the per-message line fails to be written.
    The loop (unix socket) and the workers (TCP clamd) still answer each message with its
    verdict, and the scan slots stay right (the loop once freed a slot twice here)."""
    backend = str(clamd_server.unix_socket) if transfer == "unix" else clamd_server.tcp_address
    work = Path(tempfile.mkdtemp(prefix="avl", dir="/tmp"))
    (work / "spool").mkdir()
    conf = work / "avtool.conf"
    conf.write_text(config_for(backend, "max_scans = 1\n").replace("@SPOOL@", str(work / "spool")))
    cmd = [sys.executable, "-m", "avtool", "serve", "-f", str(conf), "--debug"]
    proc = subprocess.Popen(
        [*cmd, "--socket-dir", str(work)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    d = Daemon(proc, work / "avtool", work, work / "none.log", 0.0)
    d.spool = Spool(work / "spool")
    try:
        deadline = time.monotonic() + 20
        while not d.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.stderr is not None
        proc.stderr.close()  # every later write to stderr: EPIPE
        for _ in range(3):
            assert d.filter(*d.spool.message(mail())) == "200 Ok\n"
            assert d.filter(*d.spool.message(mail(attachment=EICAR))).startswith("550 ")
    finally:
        assert d.stop() == 0
        shutil.rmtree(work, ignore_errors=True)


def test_a_start_that_fails_after_bind_leaves_nothing_behind(
    clamd_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signal handlers restored, listener and wake pipe closed, pid file gone; the socket file
    removed after a start by hand (--debug), kept under courierfilter (it refuses: 432)."""
    from avtool.config import Config
    from avtool.daemon import server as S
    from avtool.daemon.options import Options

    state = Path(tempfile.mkdtemp(prefix="avf", dir="/tmp"))
    cfg = Config.resolve(
        overrides={
            "clamd.backends": str(clamd_server.unix_socket),
            "serve.pid_file": str(state / "avtool.pid"),
            "serve.manual_start": "true",
        }
    )

    def broken(*_: object, **__: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(S, "Loop", broken)
    signals = (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)
    before = {s: signal.getsignal(s) for s in signals}
    for debug in (True, False):
        server = S.FilterServer(cfg, Options(debug=debug, socket_dir=state))
        with pytest.raises(OSError, match="Too many"):
            server.start()
        assert {s: signal.getsignal(s) for s in signals} == before
        assert server.listener is not None and server.listener.fileno() == -1
        for fd in (server.wake_r, server.wake_w):
            with pytest.raises(OSError):
                os.fstat(fd)
        assert not (state / "avtool.pid").exists()
        assert (state / "avtool").exists() is not debug
    shutil.rmtree(state, ignore_errors=True)
