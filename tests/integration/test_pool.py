"""A pool of two real clamds behind delaying proxies (bench/delayproxy.py), balance least-busy.

One clamd is killed (SIGKILL) in the middle of a 4-thread run. Its scans in flight fail; each
is retried on the other clamd, and no message ends without a verdict: the Engine returns no
Failed, and ``avtool serve`` answers no 4xx (no deferral).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from avtool.engine import Clean, Engine, Infected
from bench.delayproxy import DelayProxy
from tests.conftest import make_config
from tests.support.clamd_harness import ClamdServer
from tests.support.dirs import public_dir
from tests.support.scanning import scan_path
from tests.support.serve import EICAR, config_for, mail, start_daemon

DELAY = 0.03  # per request: keeps scans in flight on both clamds at any moment
MESSAGES = 120


class Pool:
    def __init__(self, root: Path) -> None:
        self.servers = [ClamdServer(root / f"c{i}") for i in range(2)]
        self.proxies: list[DelayProxy] = []

    def start(self) -> Pool:
        for server in self.servers:
            server.start()
            self.proxies.append(DelayProxy(server.tcp_address, DELAY).start())
        return self

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        for server in self.servers:
            server.stop()

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.proxies]

    def kill(self, i: int) -> None:
        proc = self.servers[i]._proc
        assert proc is not None
        proc.kill()  # SIGKILL: no goodbye to the connections it holds
        proc.wait()


@pytest.fixture
def pool() -> Iterator[Pool]:
    with public_dir("avq") as root:
        p = Pool(root)
        try:
            yield p.start()
        finally:
            p.stop()


def messages(directory: Path) -> list[tuple[Path, bool]]:
    clean, virus = directory / "clean.eml", directory / "virus.eml"
    clean.write_bytes(mail())
    virus.write_bytes(mail(attachment=EICAR))
    return [(virus, True) if i % 5 == 0 else (clean, False) for i in range(MESSAGES)]


def run_and_kill(
    jobs: list[tuple[Path, bool]],
    scan: Callable[[Path, bool], str | None],
    kill: Callable[[], None],
) -> list[str]:
    """4 threads scan ``jobs``; ``kill()`` runs once a quarter has been answered. Returns the
    problems ``scan`` reported."""
    turn = iter(range(len(jobs)))
    lock = threading.Lock()
    done = 0
    killed = threading.Event()
    problems: list[str] = []

    def work() -> None:
        nonlocal done
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with lock:
                i = next(turn, None)
            if i is None:
                return
            problem = scan(*jobs[i])
            with lock:
                done += 1
                if problem:
                    problems.append(f"message {i}: {problem}")
                if done == len(jobs) // 4 and not killed.is_set():
                    killed.set()
                    kill()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert killed.is_set() and done == len(jobs)
    return problems


def test_engine_retries_every_scan_in_flight_on_a_clamd_that_dies(
    pool: Pool, tmp_path: Path
) -> None:
    e = Engine.from_config(
        make_config(*pool.addresses, balance="least-busy", retry_after=60, scan_timeout=10)
    )
    alive, dying = e.backends
    in_flight_at_kill: list[int] = []
    answered: dict[str, int] = {}
    lock = threading.Lock()

    def scan(path: Path, bad: bool) -> str | None:
        v = scan_path(e, path)
        ok = isinstance(v, Infected) if bad else isinstance(v, Clean)
        with lock:
            answered[v.backend] = answered.get(v.backend, 0) + 1
        return None if ok else repr(v)

    def kill() -> None:
        in_flight_at_kill.append(dying.in_flight)
        pool.kill(1)

    problems = run_and_kill(messages(tmp_path), scan, kill)

    assert problems == []  # nothing lost: every message has its right verdict
    assert alive.scans + dying.scans == MESSAGES and alive.errors == 0
    assert sum(answered.values()) == MESSAGES
    # Both took work before the kill; the dead one failed (a scan counted in flight at the kill
    # may have had its answer already), and what failed was retried: no problem above.
    assert dying.scans > 0 and dying.errors >= 1
    assert dying.errors <= in_flight_at_kill[0] + 4  # then set aside: no more than 4 threads
    assert dying.set_aside() and alive.in_flight == dying.in_flight == 0


def test_serve_defers_nothing_when_a_clamd_of_its_pool_dies(pool: Pool) -> None:
    backends = ", ".join(f'"{a}"' for a in pool.addresses)
    text = config_for(pool.addresses[0]).replace(
        f'backends = ["{pool.addresses[0]}"]',
        f'backends = [{backends}]\nbalance = "least-busy"',
    )
    text = text.replace("retry_after = 1.0", "retry_after = 60.0")
    daemon = start_daemon(text)
    try:
        clean, virus = mail(), mail(attachment=EICAR)
        jobs = [daemon.spool.message(virus if i % 5 == 0 else clean) for i in range(MESSAGES)]
        index = {data: ctls for data, ctls in jobs}
        bad = {data for i, (data, _) in enumerate(jobs) if i % 5 == 0}

        def scan(data: Path, _: bool) -> str | None:
            reply = daemon.filter(data, index[data])
            want = "5" if data in bad else "2"
            return None if reply[:1] == want else reply.strip()

        problems = run_and_kill([(d, d in bad) for d, _ in jobs], scan, lambda: pool.kill(1))
        assert problems == []  # no 4xx: nothing deferred, nothing passed unscanned
        log = ""
        end = time.monotonic() + 5
        while "set aside" not in log and time.monotonic() < end:
            log = daemon.log()
            time.sleep(0.05)
        assert f"clamd {pool.addresses[1]} failed, set aside" in log
    finally:
        assert daemon.stop() == 0
