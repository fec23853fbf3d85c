"""Variants of the rescan client against clamd's MULTISCAN, in short alternating runs.

bench/rescan.py times whole first passes (20 s and more each); on a shared VM the machine's
speed moves by 10-30% between two such runs, more than the few percent a change to the client
could win or lose. Here each run is one user's Maildir (``--per`` messages, about a second),
and every variant runs between two MULTISCANs of the same Maildir, round after round
(``--rounds``), so that a variant and the MULTISCANs it is compared with meet the same machine.
The figure per variant is the median over rounds of MULTISCAN's time (the mean of the two
around it) over the variant's; for avtool, its loop time from its summary (start-up is the
same for every variant, and bench/rescan.py counts it). Also clamd's CPU in the variant over
its CPU in the MULTISCAN after it.

Variants (the first argument is the baseline the others are read against):

- ``avtool``: ``avtool rescan --json`` as bench/rescan.py runs it;
- ``jobs=N``: with ``--jobs N``;
- ``batch``, ``idle``, ``nice``: run under ``chrt -b 0``, ``chrt -i 0``, ``nice -n 19``
  (SCHED_BATCH never preempts clamd on waking; SCHED_IDLE runs only on an idle CPU);
- ``cpu1``: pinned to one CPU (``taskset -c 1``), so that one core's caches stay clamd's;
- ``floor``: bench/rescan.py's bare FILDES client (no walk, checks, state or output).

    python bench/alternate.py [--users 20] [--per 1000] [--rounds 40] avtool batch cpu1 floor

Not a gate: it prints the medians and quartiles, and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: tests/ and bench/ import from the repo root

from avtool.config import Config  # noqa: E402
from avtool.engine import Engine  # noqa: E402
from bench.engine import machine  # noqa: E402
from bench.interleave import cpu_of  # noqa: E402
from bench.rescan import fildes_floor, mail, rescan  # noqa: E402
from bench.scan import multiscan  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402

PREFIXES = {
    "avtool": [],
    "batch": ["chrt", "-b", "0"],
    "idle": ["chrt", "-i", "0"],
    "nice": ["nice", "-n", "19"],
    "cpu1": ["taskset", "-c", "1"],
}
Run = Callable[[Path, list[Path]], float]  # (the Maildir's user dir, its files) -> seconds


class Bench:
    """One clamd, the mail, and the runs: each returns the seconds it scanned for."""

    def __init__(self, work: Path, sock: str) -> None:
        self.work, self.sock = work, sock
        self.infected_per: dict[Path, int] = {}  # found by MULTISCAN of each Maildir first
        self.engine = Engine.from_config(Config.resolve(env={}, overrides={"clamd.backends": sock}))
        self.runs = 0

    def multiscan(self, user: Path, files: list[Path]) -> float:
        t0 = time.perf_counter()
        found = multiscan(self.engine, user, len(files))["found"]
        seconds = time.perf_counter() - t0
        assert found == self.infected_per[user], (user, found)  # noqa: S101 - a wrong count
        return seconds

    def avtool(self, prefix: list[str], extra: list[str]) -> Run:
        def run(user: Path, files: list[Path]) -> float:
            self.runs += 1
            state = self.work / "state" / f"s{self.runs}"
            done = rescan(self.sock, state, user, *prefix, options=extra)
            assert done["scanned"] == len(files), done  # noqa: S101
            assert done["found"] == self.infected_per[user], done  # noqa: S101
            return float(done["loop_seconds"])  # type: ignore[arg-type]

        return run

    def floor(self, user: Path, files: list[Path]) -> float:
        t0 = time.perf_counter()
        found = fildes_floor(self.sock, files, None)["found"]
        seconds = time.perf_counter() - t0
        assert found == self.infected_per[user], (user, found)  # noqa: S101
        return seconds

    def variant(self, name: str) -> Run:
        if name == "floor":
            return self.floor
        if name.startswith("jobs="):
            return self.avtool([], ["--jobs", name.removeprefix("jobs=")])
        if name in PREFIXES:
            return self.avtool(PREFIXES[name], [])
        raise SystemExit(f"unknown variant {name!r}: avtool, jobs=N, {', '.join(PREFIXES)}, floor")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--per", type=int, default=1000, help="messages per user's Maildir")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "alternate.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ava", dir="/tmp"))  # short: socket path limit
    work.chmod(0o755)  # noqa: S103 - clamd's user traverses it for MULTISCAN
    (work / "state").mkdir(mode=0o700)
    server = ClamdServer(work / "clamd", disable_cache=True, max_threads=8)
    rows: dict[str, list[tuple[float, float]]] = {v: [] for v in args.variants}
    try:
        root = work / "home"
        files, infected = mail(root, args.users * args.per, args.users)
        by_user: dict[Path, list[Path]] = {}
        for path in files:
            by_user.setdefault(path.parents[2], []).append(path)
        server.start()
        bench = Bench(work, str(server.unix_socket))
        users = sorted(by_user)
        for user in users:  # warms clamd and the page cache; what every run must then find
            bench.infected_per[user] = int(multiscan(bench.engine, user, args.per)["found"])  # type: ignore[call-overload]
        assert sum(bench.infected_per.values()) == infected, bench.infected_per  # noqa: S101
        os.sync()  # the corpus and the atimes that first read moved: written back now (rescan.py)
        runs = {name: bench.variant(name) for name in args.variants}
        for i in range(args.rounds):
            user = users[i % len(users)]
            mine = by_user[user]
            before = bench.multiscan(user, mine)
            for name, run in runs.items():
                cpu = cpu_of(server.pid)
                seconds = run(user, mine)
                cpu = cpu_of(server.pid) - cpu
                cpu_m = cpu_of(server.pid)
                after = bench.multiscan(user, mine)
                cpu_m = cpu_of(server.pid) - cpu_m
                rows[name].append(((before + after) / 2 / seconds, cpu / cpu_m if cpu_m else 0.0))
                before = after
            print(i, {name: round(r[-1][0], 3) for name, r in rows.items()}, flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    info = machine()
    report: dict[str, object] = {"machine": info, "per": args.per, "rounds": args.rounds}
    print(f"machine: {info['nproc']} x {info['cpu']}; Python {info['python']}; {info['clamd']}")
    print(f"{args.rounds} rounds of {args.per} messages, each variant between two MULTISCANs")
    print(f"{'variant':10} {'vs MULTISCAN':>12} {'quartiles':>13} {'clamd CPU':>10}")
    for name, values in rows.items():
        ratios = sorted(r for r, _ in values)
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        cpu = statistics.median(c for _, c in values)
        report[name] = {
            "median": round(median, 3),
            "q1": round(q1, 3),
            "q3": round(q3, 3),
            "clamd_cpu": round(cpu, 3),
            "ratios": [round(r, 3) for r, _ in values],
        }
        print(f"{name:10} {median:12.3f} {q1:6.3f}-{q3:.3f} {cpu:10.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
