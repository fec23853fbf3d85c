"""What the second look (avtool/engine/secondlook.py) costs, on the corpus of bench/corpus.py.

One clamd (tests/support/clamd_harness.py, ``DisableCache yes``, MaxThreads 8), the Engine by
FILDES, one client thread, each message as the filter handles it: the scan, then the second look
when ``policy.hides`` says the first name could hide a more severe one. Two policies, run in turn
(twice each, the best run kept): the defaults (no message qualifies: the cost must be nil) and
``policy.pass = ["Eicar*"]`` (the 2% EICAR messages qualify). Reported: corpus msg/s, the number of
second looks, and per qualifying message the first scan and the second look in ms; then the worst
case, a second look forced on the 10 largest messages.

    python bench/secondlook.py [--count 500]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: tests/ and bench/ import from the repo root

from avtool.config import Config  # noqa: E402
from avtool.daemon import policy  # noqa: E402
from avtool.engine import (  # noqa: E402
    Engine,
    Infected,
    secondlook,  # noqa: E402
)
from bench.corpus import generate  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402


def run(engine: Engine, cfg: Config, paths: list[Path]) -> dict[str, float]:
    first_ms: list[float] = []
    again_ms: list[float] = []
    infected = 0
    started = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            t0 = time.perf_counter()
            verdict = engine.scan(fd)
            t1 = time.perf_counter()
            if isinstance(verdict, Infected) and policy.hides(verdict, cfg):
                size = os.fstat(fd).st_size
                verdict = secondlook.every_name(verdict, secondlook.read_all(fd, size), engine)
                first_ms.append((t1 - t0) * 1000)
                again_ms.append((time.perf_counter() - t1) * 1000)
            infected += isinstance(verdict, Infected)
        finally:
            os.close(fd)
    took = time.perf_counter() - started
    return {
        "msg_s": len(paths) / took,
        "infected": infected,
        "second_looks": len(again_ms),
        "first_ms_median": statistics.median(first_ms) if first_ms else 0.0,
        "again_ms_median": statistics.median(again_ms) if again_ms else 0.0,
        "again_ms_max": max(again_ms, default=0.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="avsl", dir="/tmp"))
    work.chmod(0o755)  # noqa: S103 - clamd (user clamav) reaches its socket dir below it
    server = ClamdServer(work / "clamd", max_threads=8, disable_cache=True)
    try:
        paths = generate(work / "corpus", args.count)
        server.start()
        backend = {"clamd.backends": str(server.unix_socket)}
        passing = backend | {"policy.pass": "Eicar*"}
        policies = {
            "defaults": Config.resolve(env={}, overrides=backend),
            'pass = ["Eicar*"]': Config.resolve(env={}, overrides=passing),
        }
        best: dict[str, dict[str, float]] = {}
        for _ in range(2):
            for name, cfg in policies.items():
                result = run(Engine.from_config(cfg), cfg, paths)
                if name not in best or result["msg_s"] > best[name]["msg_s"]:
                    best[name] = result
        print(f"{len(paths)} messages, FILDES, 1 client, clamd DisableCache (best of 2)")
        print(f"{'policy':<20} {'msg/s':>7} {'infected':>8} {'2nd looks':>9} "
              f"{'scan ms':>8} {'2nd look ms':>11} {'max':>6}")  # fmt: skip
        for name, r in best.items():
            print(
                f"{name:<20} {r['msg_s']:7.1f} {r['infected']:8.0f} {r['second_looks']:9.0f} "
                f"{r['first_ms_median']:8.2f} {r['again_ms_median']:11.2f} {r['again_ms_max']:6.2f}"
            )
        # the worst case: a second look forced on the largest messages (2 MB attachments)
        engine = Engine.from_config(policies["defaults"])
        largest = sorted(paths, key=lambda p: p.stat().st_size)[-10:]
        scan_ms, again_ms = [], []
        for path in largest:
            data = path.read_bytes()
            t0 = time.perf_counter()
            first = secondlook.scan_bytes(engine, data)
            t1 = time.perf_counter()
            secondlook.every_name(Infected(("Forced",)), data, engine)
            scan_ms.append((t1 - t0) * 1000)
            again_ms.append((time.perf_counter() - t1) * 1000)
            assert not isinstance(first, Infected)  # noqa: S101
        mb = statistics.median(p.stat().st_size for p in largest) / 1e6
        print(
            f"forced on the 10 largest (median {mb:.1f} MB): scan {statistics.median(scan_ms):.1f}"
            f" ms, second look {statistics.median(again_ms):.1f} ms (medians)"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
