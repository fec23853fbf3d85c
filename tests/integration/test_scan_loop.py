"""The scan's loop driver (avtool/scan/driver.py): with every clamd on a unix socket, ``scan``
and ``rescan`` run on one thread, ``jobs`` messages at clamd on kept sessions, with the
daemon's failover rules (engine/pending.py). Against the real clamd; a fake one only for the
faults (a clamd that hangs)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.engine import Clean, Engine, Failed, Infected
from avtool.engine.session import SessionPool
from avtool.scan import driver
from avtool.scan.scanner import Options, Result, run
from avtool.scan.worker import Worker
from tests.conftest import MakeConfig, make_config
from tests.fakes.clamd import FakeClamd
from tests.integration.test_scan import Recorder
from tests.support.clamd_harness import ClamdServer
from tests.support.dirs import public_dir
from tests.support.mailboxes import EICAR, maildir, plain, with_attachment

pytestmark = pytest.mark.clamd


def mail_dir(root: Path, count: int, every: int = 5) -> tuple[Path, set[str]]:
    """A Maildir of ``count`` messages, one in ``every`` carrying EICAR; (dir, infected keys)."""
    items, infected = [], set()
    for n in range(count):
        name = f"{1700000000 + n}.M{n}P1.loop"
        if n % every == 0:
            items.append(("new", name, with_attachment(f"virus {n}", "e.com", EICAR)))
            infected.add(name)
        else:
            items.append(("cur", name + ":2,S", plain(f"clean {n}")))
    return maildir(root, items), infected


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory clamd's own user can read below (transfer "scan")."""
    with public_dir("avl") as d:
        yield d


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses of the kept sessions opened (SessionPool.connect), in order."""
    opened: list[str] = []
    real = SessionPool.connect

    def counting(self: SessionPool) -> object:
        opened.append(self.address)
        return real(self)

    monkeypatch.setattr(SessionPool, "connect", counting)
    return opened


class Watching(Recorder):
    """A Recorder that notes the threads alive at each result."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def result(self, result: Result) -> None:
        super().result(result)
        self.threads.update(t.name for t in threading.enumerate())


def test_one_thread_and_jobs_sessions_for_a_whole_maildir(
    engine_config: MakeConfig, tmp_path: Path, connects: list[str]
) -> None:
    """60 messages with jobs 3: the right verdict for each, on at most 3 sessions, and no
    thread but the caller's (red with the loop bypassed: the pool's threads show)."""
    md, infected = mail_dir(tmp_path / "Maildir", 60)
    rec = Watching()
    summary = run(engine_config(), [str(md)], rec, options=Options(jobs=3))
    assert summary.scanned == 60 and summary.exit_code == 1
    found = {os.path.basename(r.message.path) for r in rec.results if r.status == "infected"}
    assert found == infected
    assert all(isinstance(r.verdict, Clean | Infected) for r in rec.results)
    assert 1 <= len(connects) <= 3
    assert not any(name.startswith("avtool-scan") for name in rec.threads), rec.threads


def test_the_pool_drives_a_clamd_reached_by_path(
    engine_config: MakeConfig, shared_dir: Path
) -> None:
    """transfer "scan" (clamd opens the path itself) is no FILDES: the pool of threads, with
    the same verdicts."""
    cfg = engine_config(transfer="scan")
    assert not Worker(cfg, Engine.from_config(cfg), Options(), moving=False).looped
    fildes = engine_config()
    assert Worker(fildes, Engine.from_config(fildes), Options(), moving=False).looped
    md, infected = mail_dir(shared_dir / "Maildir", 12, every=4)
    for p in [md, *md.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    rec = Watching()
    summary = run(cfg, [str(md)], rec, options=Options(jobs=2))
    assert summary.scanned == 12 and summary.failed == 0
    found = {os.path.basename(r.message.path) for r in rec.results if r.status == "infected"}
    assert found == infected
    assert any(name.startswith("avtool-scan") for name in rec.threads)


def test_a_hanging_clamd_fails_over_to_the_real_one(
    clamd_server: ClamdServer, sockdir: Path, tmp_path: Path
) -> None:
    """The first clamd takes the session and never answers: each scan it holds goes on to the
    real clamd after scan_timeout, the hanging one is set aside, every verdict is right."""
    md, infected = mail_dir(tmp_path / "Maildir", 10)
    real = str(clamd_server.unix_socket)
    with FakeClamd(sockdir / "hang.sock", "hang") as fake:
        cfg = make_config(fake.address, real, connect_timeout=0.5, scan_timeout=0.5, retry_after=60)
        rec = Recorder()
        started = time.monotonic()
        summary = run(cfg, [str(md)], rec, options=Options(jobs=2))
        took = time.monotonic() - started
    assert summary.scanned == 10 and summary.failed == 0
    found = {os.path.basename(r.message.path) for r in rec.results if r.status == "infected"}
    assert found == infected
    assert all(r.verdict.backend == real for r in rec.results)
    assert took < 5.0  # one wait of scan_timeout, not one per message


def test_a_clamd_that_never_answers_fails_every_message_and_the_scan_ends(
    sockdir: Path, tmp_path: Path
) -> None:
    """The only clamd hangs after PING: each message is Failed once its attempt's time is up
    (poll's timeout, not a reply), two at a time, and the scan ends with exit 2. Red with the
    loop's timeouts removed: it waits for ever (the thread is still alive)."""
    md, _ = mail_dir(tmp_path / "Maildir", 6)
    with FakeClamd(sockdir / "hang.sock", "hang") as fake:
        cfg = make_config(fake.address, connect_timeout=0.4, scan_timeout=0.4, retry_after=60)
        rec = Recorder()
        out: list[object] = []
        worker = threading.Thread(
            target=lambda: out.append(run(cfg, [str(md)], rec, options=Options(jobs=2))),
            daemon=True,
        )
        started = time.monotonic()
        worker.start()
        worker.join(15)
        took = time.monotonic() - started
    assert not worker.is_alive(), "the scan never ended"
    (summary,) = out
    assert summary.scanned == 6 and summary.failed == 6 and summary.exit_code == 2  # type: ignore[attr-defined]
    assert all(isinstance(r.verdict, Failed) and "timeout" in r.verdict.reason for r in rec.results)
    assert took < 6 * 0.4 + 3.0  # two at a time: about 3 waits, far from 6


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_an_interrupted_scan_leaves_no_descriptor_open(
    engine_config: MakeConfig, tmp_path: Path
) -> None:
    """Ctrl-C (an exception from the report) half way: every message file, memfd and clamd
    session the loop held is closed (red with the loop's ``finally`` removed)."""
    md, _ = mail_dir(tmp_path / "Maildir", 40)

    class Interrupting(Recorder):
        def result(self, result: Result) -> None:
            super().result(result)
            if len(self.results) == 10:
                raise KeyboardInterrupt

    cfg = engine_config()
    run(cfg, [str(md)], Recorder(), options=Options(jobs=4))  # imports, caches: warm
    before = _fds()
    rec = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        run(cfg, [str(md)], rec, options=Options(jobs=4))
    assert len(rec.results) == 10
    assert _fds() - before == set()


def test_the_loop_is_what_scan_all_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_all sends a looped worker to the loop and any other to the pool."""
    picked: list[str] = []
    monkeypatch.setattr(driver._Loop, "run", lambda self, items: picked.append("loop"))
    monkeypatch.setattr(driver, "_pool", lambda *a: picked.append("pool"))

    class W:
        looped = True

    driver.scan_all([], 1, W(), lambda item: None)  # type: ignore[arg-type]
    W.looped = False
    driver.scan_all([], 1, W(), lambda item: None)  # type: ignore[arg-type]
    assert picked == ["loop", "pool"]
