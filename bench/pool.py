"""Pool benchmark: one Engine on 1, 2 and 3 clamd backends, each behind a delaying proxy.

Each backend stands for a clamd on another host: its own clamd process
(tests/support/clamd_harness.py, ``DisableCache yes``, MaxThreads = --slots) on a loopback TCP port,
reached through bench/delayproxy.py, which adds --delay-ms to every request and lets at most --slots
requests through at once. So each backend serves about slots / delay scans per second whatever this
machine's CPUs do, and the backends are the bottleneck: with enough clients (--clients, more than
backends x slots), throughput should grow with the number of backends.

Runs, on the corpus of bench/corpus.py, by INSTREAM (TCP), every one bounded in count and time:
  1. balance least-busy and round-robin on 1, 2, 3 backends: msg/s, p50/p99, scans per backend;
  2. 3 backends, the third 4x slower: least-busy against round-robin;
  3. 3 backends, least-busy, one clamd killed (SIGKILL) after a third of the messages: the
     retries (scans that failed on the dead one and were answered by another) and the lost
     (messages with no verdict, or a wrong one): the target is 0 lost.

    python bench/pool.py [--count 300] [--delay-ms 40] [--slots 2] [--clients 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from avtool.engine import Clean, Engine, Infected  # noqa: E402
from bench.corpus import generate  # noqa: E402
from bench.delayproxy import DelayProxy  # noqa: E402
from bench.engine import Result, config, machine, run, table  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402
from tests.support.scanning import scan_path  # noqa: E402

MAX = "32M"  # StreamMaxLength and scan.max_size: every corpus message fits


def pool_engine(addresses: list[str], balance: str) -> Engine:
    return Engine.from_config(
        config(
            ",".join(addresses),
            **{"clamd.balance": balance, "scan.max_size": MAX, "clamd.retry_after": "60"},
        )
    )


def scanner(engine: Engine, lost: list[str]) -> object:
    def scan(path: Path) -> bool:
        v = scan_path(engine, path)
        want = Infected if "eicar" in path.name else Clean
        if not isinstance(v, want):
            lost.append(f"{path.name}: {v}")
        return isinstance(v, Infected)

    return scan


def failover_run(
    servers: list[ClamdServer], proxies: list[DelayProxy], paths: list[Path], clients: int
) -> dict[str, object]:
    """3 backends, least-busy; the last clamd is killed once a third of the messages is done."""
    engine = pool_engine([p.address for p in proxies], "least-busy")
    dying = engine.backends[-1]
    lost: list[str] = []
    scan = scanner(engine, lost)
    done = 0
    lock = threading.Lock()
    at_kill: dict[str, int] = {}

    def counted(path: Path) -> bool:
        nonlocal done
        hit: bool = scan(path)  # type: ignore[operator]
        with lock:
            done += 1
            if done == len(paths) // 3:
                at_kill["in_flight"] = dying.in_flight
                at_kill["answered_by_it"] = dying.scans
                proc = servers[-1]._proc
                if proc is not None:
                    proc.kill()
        return hit

    r = run("least-busy x3, one killed", clients, paths, counted)
    return {
        "result": asdict(r),
        "in_flight_on_it_at_kill": at_kill.get("in_flight"),
        "answered_by_it_before_kill": at_kill.get("answered_by_it"),
        "retries": dying.errors,  # every failed attempt there was retried on another backend
        "scans_per_backend": {b.address: b.scans for b in engine.backends},
        "lost": len(lost),
        "lost_detail": lost[:10],
        "set_aside": dying.set_aside(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--slots", type=int, default=2, help="requests at once per backend")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "pool.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="avp", dir="/tmp"))
    work.chmod(0o755)  # noqa: S103 - clamd's user traverses it
    servers = [
        ClamdServer(
            work / f"clamd{i}",
            disable_cache=True,
            max_threads=args.slots,
            stream_max=MAX,
            extra={"MaxFileSize": MAX, "MaxScanSize": "64M"},
        )
        for i in range(3)
    ]
    proxies: list[DelayProxy] = []
    results: list[Result] = []
    spread: dict[str, dict[str, int]] = {}
    try:
        paths = generate(work / "corpus", args.count)
        for server in servers:
            server.start()
            proxy = DelayProxy(server.tcp_address, args.delay_ms / 1000, max_connections=args.slots)
            proxies.append(proxy.start())
        addresses = [p.address for p in proxies]
        for n in (1, 2, 3):
            for balance in ("least-busy", "round-robin"):
                engine = pool_engine(addresses[:n], balance)
                lost: list[str] = []
                r = run(f"{balance} x{n}", args.clients, paths, scanner(engine, lost))  # type: ignore[arg-type]
                if lost:
                    raise RuntimeError(f"{r.name}: wrong or missing verdicts: {lost[:5]}")
                results.append(r)
                spread[r.name] = {b.address: b.scans for b in engine.backends}
        # Uneven pool: the third backend 4x slower (a far or loaded host). round-robin waits
        # for it one turn in three; least-busy sends it fewer.
        slow = DelayProxy(
            servers[2].tcp_address, 4 * args.delay_ms / 1000, max_connections=args.slots
        )
        proxies.append(slow.start())
        for balance in ("least-busy", "round-robin"):
            engine = pool_engine([*addresses[:2], slow.address], balance)
            lost = []
            r = run(f"{balance} x3, one 4x slower", args.clients, paths, scanner(engine, lost))  # type: ignore[arg-type]
            if lost:
                raise RuntimeError(f"{r.name}: wrong or missing verdicts: {lost[:5]}")
            results.append(r)
            spread[r.name] = {b.address: b.scans for b in engine.backends}
        failover = failover_run(servers, proxies[:3], paths, args.clients)
    finally:
        for proxy in proxies:
            proxy.stop()
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    rate = {r.name: r.rate for r in results}
    scaling = {
        balance: {
            f"x{n}": round(rate[f"{balance} x{n}"] / rate[f"{balance} x1"], 2) for n in (1, 2, 3)
        }
        for balance in ("least-busy", "round-robin")
    }
    info = machine()
    report: dict[str, object] = {
        "machine": info,
        "settings": {
            "count": args.count,
            "delay_ms": args.delay_ms,
            "slots": args.slots,
            "clients": args.clients,
        },
        "results": [asdict(r) for r in results],
        "scans_per_backend": spread,
        "scaling_vs_one_backend": scaling,
        "failover": failover,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"machine: {info['nproc']} x {info['cpu']}; Python {info['python']}; {info['clamd']}")
    print(
        f"corpus: {len(paths)} messages; +{args.delay_ms:g} ms per request, {args.slots} at once "
        f"per backend; {args.clients} client threads; INSTREAM over TCP"
    )
    print(table(results))
    for name, counts in spread.items():
        print(f"  {name:30} scans per backend: {list(counts.values())}")
    for balance, s in scaling.items():
        print(f"throughput vs 1 backend, {balance}: {s}")
    f = failover
    print(
        f"one of 3 clamds killed mid-run: {f['retries']} scans retried on another backend "
        f"({f['in_flight_on_it_at_kill']} in flight on it at the kill), {f['lost']} lost; "
        f"scans per backend {list(f['scans_per_backend'].values())}"  # type: ignore[attr-defined]
    )
    uneven = rate["least-busy x3, one 4x slower"] / rate["round-robin x3, one 4x slower"]
    print(f"uneven pool, least-busy / round-robin throughput: {uneven:.2f}")
    report["uneven_least_busy_vs_round_robin"] = round(uneven, 2)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    ok = f["lost"] == 0 and scaling["least-busy"]["x3"] > scaling["least-busy"]["x2"] > 1.0
    print(f"written: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
