"""What the filter answers when carrying out a decision fails, or when it has a bug: always a
4xx, Courier keeps the mail, nothing half done, nothing leaked (issue 14: the quarantine's
descriptor leak; issue 16: the safety net a mutation run found missing).

Through ``Pipeline.handle`` (the blocking path: batch-test, TCP pools) with the real clamd and
a fault put in at one seam, and through ``avtool serve`` (the event loop) with real faults: a
quarantine dir under a regular file, a quarantine on a full file system (a tmpfs with no free
inode, when this runs as root and may mount), a bug put into the daemon at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from avtool.config import Config
from avtool.courier import control, message
from avtool.courier.protocol import Request
from avtool.daemon import pipeline as pipeline_module
from avtool.daemon import policy
from avtool.daemon.pipeline import Outcome, Pipeline
from avtool.engine import Engine
from tests.conftest import make_config
from tests.support.clamd_harness import ClamdServer
from tests.support.serve import (
    EICAR,
    Daemon,
    Spool,
    config_for,
    mail,
    spawn_fd3,
    start_daemon,
)

pytestmark = pytest.mark.clamd
FORGED = b"X-Virus-Status: Clean\nSubject:"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    (tmp_path / "spool").mkdir()
    return Spool(tmp_path / "spool")


@pytest.fixture
def run(clamd_server: ClamdServer, spool: Spool, tmp_path: Path) -> Callable[..., Any]:
    """``run(message, **config)``: the message through Pipeline.handle; (outcome, data path,
    control path, the files' bytes before)."""

    def handle(data: bytes, **values: object) -> tuple[Outcome, Path, Path, bytes, str]:
        cfg: Config = make_config(
            str(clamd_server.unix_socket),
            **{"serve.spool_dir": str(spool.root), "policy.quarantine_dir": str(tmp_path / "q")}
            | values,
        )
        data_path, (ctl,) = spool.message(data)
        before, before_ctl = data_path.read_bytes(), ctl.read_text()
        request = Request(str(data_path), (str(ctl),))
        outcome = Pipeline(cfg, Engine.from_config(cfg)).handle(request, time.monotonic() + 20)
        return outcome, data_path, ctl, before, before_ctl

    return handle


def fail_with(code: int, when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def failing(*args: Any, **kwargs: Any) -> Any:
            if when(*args, **kwargs):
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        return failing

    return wrap


def test_a_quarantine_that_fails_defers_and_leaks_no_descriptor(
    run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Disk full when the copy is made: 432, the control file as it was (no "delivered"
    mark), no half quarantine, and no descriptor left open (once: one per message)."""
    create = pipeline_module._create_private
    monkeypatch.setattr(
        pipeline_module,
        "_create_private",
        fail_with(errno.ENOSPC, lambda path: path.name == "data")(create),
    )
    infected = mail(attachment=EICAR)
    run(infected, **{"policy.infected": "quarantine"})  # warm: imports, caches
    before = open_fds()
    for _ in range(50):
        outcome, data, ctl, data_before, ctl_before = run(
            infected, **{"policy.infected": "quarantine"}
        )
        assert outcome.reply.code == 432, outcome.reply
        assert ctl.read_text() == ctl_before
        assert data.read_bytes() == data_before
    assert open_fds() == before
    assert list((tmp_path / "q").iterdir()) == []


@pytest.mark.parametrize("action", ["quarantine", "drop"])
def test_a_drop_mark_that_fails_defers(
    run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """The control file cannot be written (a read-only file system): 432, not the decision's
    200, or Courier would deliver what was to be dropped."""
    monkeypatch.setattr(
        control,
        "_open",
        fail_with(errno.EROFS, lambda path, flags, *_: bool(flags & os.O_RDWR))(control._open),
    )
    before = open_fds()
    outcome, _, ctl, _, ctl_before = run(mail(attachment=EICAR), **{"policy.infected": action})
    assert outcome.reply.code == 432, outcome.reply
    assert outcome.decision is not None and outcome.decision.action == action
    assert ctl.read_text() == ctl_before
    assert open_fds() == before


@pytest.mark.parametrize(
    ("data", "values"),
    [
        (mail(attachment=EICAR), {"policy.infected": "pass"}),  # adds X-Virus-Status
        (mail().replace(b"Subject:", FORGED, 1), {}),  # renames a forged one
        (mail().replace(b"Subject:", FORGED, 1), {"policy.skip_relay_clients": "true"}),
    ],
)
def test_a_header_write_that_fails_defers(
    run: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
    values: dict[str, str],
) -> None:
    """No space for the rewritten copy: 432 (the mail would go out with the forged field or
    without ours), the file untouched, no temporary file left."""

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(message, "_create_temp", full)
    outcome, path, ctl, before, ctl_before = run(data, **values)
    assert outcome.reply.code == 432, outcome.reply
    assert path.read_bytes() == before
    assert ctl.read_text() == ctl_before
    assert not [name for name in os.listdir(path.parent) if name.startswith(".avtool-")]


@pytest.mark.parametrize("where", ["decide", "judge", "exemption"])
def test_a_bug_defers_through_pipeline_handle(
    run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An internal error answers 432, never 200 (a peer turns any exception into 200 Ok)."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    target = Pipeline if where == "judge" else policy
    monkeypatch.setattr(target, where, boom)
    for data in (mail(), mail(attachment=EICAR)):
        outcome, path, ctl, before, ctl_before = run(data)
        assert outcome.reply.code == 432, outcome.reply
        assert outcome.reply.text == "4.3.0 avtool internal error: RuntimeError"
        assert (path.read_bytes(), ctl.read_text()) == (before, ctl_before)


# ---- through the daemon -----------------------------------------------------------------------


def daemon_fds(d: Daemon) -> int:
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def run_infected(d: Daemon, count: int) -> list[tuple[str, Path, str]]:
    out = []
    for _ in range(count):
        data, ctls = d.spool.message(mail(attachment=EICAR))
        before = ctls[0].read_text()
        out.append((d.filter(data, ctls), ctls[0], before))
    return out


def fail_to_quarantine(clamd_server: ClamdServer, quarantine_dir: str) -> Daemon:
    """A daemon that quarantines infected mail into ``quarantine_dir``, which cannot take it:
    50 messages, 50 times 432, their control files unchanged, the daemon's descriptors as
    before. Returned stopped (exit 0), for its log."""
    extra = f'\n[policy]\ninfected = "quarantine"\nquarantine_dir = "{quarantine_dir}"\n'
    d = start_daemon(config_for(str(clamd_server.unix_socket), extra))
    try:
        run_infected(d, 1)
        before = daemon_fds(d)
        for reply, ctl, ctl_before in run_infected(d, 50):
            assert reply == "432 4.3.0 avtool could not quarantine the message\n"
            assert ctl.read_text() == ctl_before
        assert daemon_fds(d) == before
    finally:
        assert d.stop() == 0
    return d


def test_a_quarantine_dir_under_a_regular_file_defers(clamd_server: ClamdServer) -> None:
    directory = Path(tempfile.mkdtemp(prefix="avq", dir="/tmp"))
    (directory / "file").write_text("not a directory\n")
    d = fail_to_quarantine(clamd_server, f"{directory}/file/q")
    assert "cannot quarantine" in d.log() and "Traceback" not in d.log()


@contextlib.contextmanager
def full_file_system() -> Iterator[Path]:
    """A tmpfs with room for one directory and no file in it (ENOSPC on the create): needs
    root and mount(8); skips otherwise."""
    mount = Path(tempfile.mkdtemp(prefix="avf", dir="/tmp"))
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=2,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
    )
    if made.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def test_a_quarantine_on_a_full_disk_defers_and_leaks_nothing(clamd_server: ClamdServer) -> None:
    """The real thing: 50 messages to a quarantine that can make its directory but not the
    file (ENOSPC), 50 times 432, the control files unchanged, the daemon's descriptors as
    before (it leaked one per message)."""
    with full_file_system() as full:
        d = fail_to_quarantine(clamd_server, str(full))
        assert os.listdir(full) == []
    assert "No space left on device" in d.log()


BUGGY = """
import sys
from avtool.daemon import pipeline, policy
from avtool.cli.app import main

def boom(*args, **kwargs):
    raise RuntimeError("a bug")

{name} = boom
sys.argv[0] = "avtool"
main(sys.argv[1:])
"""


@pytest.mark.parametrize("where", ["decide", "exemption"])
def test_a_bug_defers_through_the_loop(clamd_server: ClamdServer, where: str) -> None:
    """The daemon's event loop with a bug in the policy: 432 for clean and infected mail,
    and the daemon goes on."""
    workdir = Path(tempfile.mkdtemp(prefix="avb", dir="/tmp"))
    d = start_daemon(config_for(str(clamd_server.unix_socket)), workdir=workdir)
    d.stop()  # only for its files: the spool and the config; now the buggy one
    cmd = [sys.executable, "-c", BUGGY.format(name=f"policy.{where}"), "serve"]
    cmd += ["-f", str(workdir / "avtool.conf"), "--socket-dir", str(workdir / "s"), "--debug"]
    proc, _ = spawn_fd3(cmd, workdir / "buggy.log", cwd=workdir)
    buggy = Daemon(proc, workdir / "s" / "avtool", workdir, workdir / "buggy.log", 0.0)
    buggy.spool = d.spool
    try:
        for data in (mail(), mail(attachment=EICAR), mail()):
            reply = buggy.filter(*buggy.spool.message(data))
            assert reply == "432 4.3.0 avtool internal error: RuntimeError\n"
    finally:
        assert buggy.stop() == 0
    assert "internal error on" in buggy.log()


def test_a_log_line_that_fails_still_answers(clamd_server: ClamdServer) -> None:
    """The log line of a message raises (issue 16): Courier still gets 432, whether the loop
    answers (a clean message) or a worker does (a forged X-Virus-Status to rename: the header
    is rewritten in a worker), and the daemon goes on. Before, the worker sent no reply."""
    workdir = Path(tempfile.mkdtemp(prefix="avb", dir="/tmp"))
    d = start_daemon(config_for(str(clamd_server.unix_socket)), workdir=workdir)
    d.stop()  # only for its files: the spool and the config; now the buggy one
    cmd = [sys.executable, "-c", BUGGY.format(name="pipeline.Pipeline.log"), "serve"]
    cmd += ["-f", str(workdir / "avtool.conf"), "--socket-dir", str(workdir / "s"), "--debug"]
    proc, _ = spawn_fd3(cmd, workdir / "buggy.log", cwd=workdir)
    buggy = Daemon(proc, workdir / "s" / "avtool", workdir, workdir / "buggy.log", 0.0)
    buggy.spool = d.spool
    try:
        for data in (mail(), mail().replace(b"Subject:", FORGED, 1), mail()):
            reply = buggy.filter(*buggy.spool.message(data))
            assert reply == "432 4.3.0 avtool internal error\n"
    finally:
        assert buggy.stop() == 0
