"""``avtool scan`` benchmark: against clamd's own MULTISCAN, and memory as the mailbox grows.

One clamd started by tests/support/clamd_harness.py with ``DisableCache yes`` (its result cache
makes repeat runs ~13x faster, docs/notes/clamav.md §2) and MaxThreads 8, as bench/engine.py
does. Measured:

1. A Maildir of 2,000 messages of bench/corpus.py's realistic mix: clamd MULTISCAN of it (clamd
   alone) and ``avtool scan --quiet`` of it (a real process, stdout a file), two interleaved runs
   each, best of each; then ``-j`` 1, 2 and 8 against the default, once each.
2. How an mbox message reaches clamd (4 threads, the same 2,000 messages as one mbox): copied
   into a memfd and passed by FILDES, copied into a temp file on disk and passed by FILDES, or
   streamed as a byte range of the mbox by INSTREAM (os.sendfile from the mbox). Then
   ``avtool scan`` of the mbox.
3. Peak RSS of ``avtool scan`` (os.wait4) for 2,000 and 20,000 messages, as a Maildir and as
   an mbox. These use small messages (the corpus's plain and text+HTML kinds, 2-70 KB) to keep
   the 20,000 run short; the realistic 2,000 run's RSS is shown too.

    python bench/scan.py [--count 2000] [--big 20000] [--out bench/out/scan.json]

Targets: avtool scan >= 0.90 x MULTISCAN msg/s; peak RSS at 20,000 within 10% of 2,000.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: tests/ and bench/ import from the repo root

from avtool.config import Config  # noqa: E402
from avtool.engine import Clean, Engine, Infected, Verdict  # noqa: E402
from avtool.scan.mailbox import Message, OpenFile  # noqa: E402
from avtool.scan.mailbox import mbox as mbox_format  # noqa: E402
from avtool.scan.mailbox.maildir import copy_range  # noqa: E402
from bench.corpus import generate, message  # noqa: E402
from bench.engine import machine, timed_threads, verdict  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402

TARGET_RATIO, TARGET_RSS = 0.90, 0.10
FROM_LINE = b"From bench@example.com Mon Jan  1 00:00:00 2024\n"


# ---- corpora -----------------------------------------------------------------------------------
def realistic_maildir(root: Path, count: int) -> Path:
    """bench/corpus.py's mix, renamed into ``cur/`` as a reader leaves them (seen)."""
    generate(root / "cur", count)
    for sub in ("new", "tmp"):
        (root / sub).mkdir(mode=0o755)
    root.chmod(0o755)  # noqa: S103 - clamd's own user walks it for MULTISCAN
    for n, path in enumerate(sorted((root / "cur").iterdir())):
        path.rename(root / "cur" / f"{1700000000 + n}.M{n}P1.bench:2,S")
    return root


def small_maildir(root: Path, count: int, seed: int = 2) -> Path:
    """Small messages only (plain and text+HTML), for the memory runs."""
    rng = random.Random(seed)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, mode=0o755)
    for n in range(count):
        data = message(rng, n, "plain" if n % 3 else "alternative")
        (root / "cur" / f"{1700000000 + n}.M{n}P1.bench:2,S").write_bytes(data)
    return root


def mbox_of(maildir: Path, path: Path) -> Path:
    """The Maildir's messages as one mbox, body lines quoted as mbox(5) writers do."""
    with open(path, "wb") as out:
        for f in sorted((maildir / "cur").iterdir()):
            data = f.read_bytes().replace(b"\nFrom ", b"\n>From ")
            out.write(FROM_LINE + data + (b"" if data.endswith(b"\n") else b"\n") + b"\n")
    return path


# ---- runs ----------------------------------------------------------------------------------------
def avtool_scan(sock: str, target: Path, work: Path, *extra: str) -> dict[str, object]:
    """One ``avtool scan --quiet`` process: its own rate, and its peak RSS from wait4."""
    out_path = work / "scan.out"
    cmd = [sys.executable, "-m", "avtool", "scan", "--quiet", "--json"]
    cmd += ["--set", f"clamd.backends={sock}", *extra, str(target)]
    with open(out_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    summary = json.loads(out_path.read_text().splitlines()[-1])
    assert summary["type"] == "summary", summary
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr.read() if proc.stderr else "")
    return {
        "messages": summary["scanned"],
        "found": summary["infected"],
        "jobs": summary["jobs"],
        "seconds": round(seconds, 3),  # the whole process, start-up included
        "rate": round(summary["scanned"] / seconds, 1),
        "scan_rate": summary["messages_per_second"],  # the scan alone, as avtool reports it
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def multiscan(engine: Engine, target: Path, count: int) -> dict[str, object]:
    client = engine.backends[0].client
    t0 = time.perf_counter()
    raw = client.command(f"MULTISCAN {target}", time.monotonic() + 1800, until_eof=True)
    lines = raw.split(b"\0")[:-1]
    seconds = time.perf_counter() - t0
    return {
        "messages": count,
        "found": sum(line.endswith(b" FOUND") for line in lines),
        "seconds": round(seconds, 3),
        "rate": round(count / seconds, 1),
    }


# ---- mbox transfer: memfd + FILDES, temp file + FILDES, INSTREAM of the byte range -----------
def via_memfd(engine: Engine) -> Callable[[int, Message], Verdict]:
    def scan(fd: int, m: Message) -> Verdict:
        mem = os.memfd_create("bench", os.MFD_CLOEXEC)
        try:
            copy_range(fd, mem, m.offset, m.size)
            return engine.scan(mem)
        finally:
            os.close(mem)

    return scan


def via_tempfile(engine: Engine, directory: Path) -> Callable[[int, Message], Verdict]:
    def scan(fd: int, m: Message) -> Verdict:
        with tempfile.TemporaryFile(dir=directory) as f:
            copy_range(fd, f.fileno(), m.offset, m.size)
            return engine.scan(f.fileno())

    return scan


def via_instream(sock: str) -> Callable[[int, Message], Verdict]:
    """INSTREAM of the range straight from the mbox: no copy on the client side at all."""

    def scan(fd: int, m: Message) -> Verdict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(sock)
            s.sendall(b"zINSTREAM\0")
            offset, end = m.offset, m.offset + m.size
            while offset < end:
                n = min(1 << 20, end - offset)
                s.sendall(struct.pack("!L", n))
                sent = 0
                while sent < n:
                    sent += os.sendfile(s.fileno(), fd, offset + sent, n - sent)
                offset += n
            s.sendall(b"\0\0\0\0")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        text = reply.rstrip(b"\0").decode()
        return Infected((text,)) if text.endswith("FOUND") else Clean()

    return scan


def transfer_run(
    name: str, path: Path, scan: Callable[[int, Message], Verdict], threads: int = 4
) -> dict[str, object]:
    fd = os.open(path, os.O_RDONLY)
    source = OpenFile(fd)
    items = [m for m in mbox_format.messages(str(path), source, os.fstat(fd).st_size)]
    found = 0
    lock = threading.Lock()
    turn = iter(range(len(items)))

    def worker() -> None:
        nonlocal found
        hits = 0
        for i in turn:  # a shared iterator: next() is atomic under the GIL
            m = items[i]
            assert isinstance(m, Message)
            hits += isinstance(scan(fd, m), Infected)
        with lock:
            found += hits

    seconds, cpu = timed_threads(threads, worker)
    return {
        "name": name,
        "messages": len(items),
        "found": found,
        "seconds": round(seconds, 3),
        "rate": round(len(items) / seconds, 1),
        "client_cpu_ms_per_msg": round(cpu / len(items) * 1000, 3),
    }


# ---- report --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--big", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "scan.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="avs", dir="/tmp"))  # short: socket path limit
    work.chmod(0o755)  # noqa: S103 - clamd's user traverses it for MULTISCAN
    server = ClamdServer(work / "clamd", disable_cache=True, max_threads=8)
    report: dict[str, object] = {"machine": machine()}
    try:
        t0 = time.perf_counter()
        maildir = realistic_maildir(work / "Maildir", args.count)
        mbox = mbox_of(maildir, work / "mbox")
        small, big = (
            small_maildir(work / "small", args.count),
            small_maildir(work / "big", args.big),
        )
        small_mbox, big_mbox = mbox_of(small, work / "small.mbox"), mbox_of(big, work / "big.mbox")
        size = sum(p.stat().st_size for p in (maildir / "cur").iterdir())
        # corpus.py's EICAR messages say so in their Subject (the attachment is base64)
        expected = sum(
            b"Subject: eicar message" in p.read_bytes() for p in (maildir / "cur").iterdir()
        )
        report["corpus"] = {
            "messages": args.count,
            "bytes": size,
            "infected": expected,
            "small_bytes": small_mbox.stat().st_size,
            "big_bytes": big_mbox.stat().st_size,
            "generated_in_s": round(time.perf_counter() - t0, 1),
        }
        server.start()
        sock = str(server.unix_socket)
        cfg = Config.resolve(env={}, overrides={"clamd.backends": sock, "scan.max_size": "25M"})
        engine = Engine.from_config(cfg)

        rate_runs: list[dict[str, object]] = []
        for _ in range(2):  # interleaved: the ratio compares the best of each
            rate_runs.append(
                {"name": "clamd MULTISCAN (alone)", **multiscan(engine, maildir, args.count)}
            )
            rate_runs.append({"name": "avtool scan Maildir", **avtool_scan(sock, maildir, work)})
        for jobs in ("1", "2", "8"):
            run = avtool_scan(sock, maildir, work, "--jobs", jobs)
            rate_runs.append({"name": f"avtool scan Maildir -j {jobs}", **run})
        rate_runs.append({"name": "avtool scan mbox", **avtool_scan(sock, mbox, work)})

        transfers = [
            transfer_run("mbox range: memfd + FILDES", mbox, via_memfd(engine)),
            transfer_run("mbox range: INSTREAM sendfile", mbox, via_instream(sock)),
            transfer_run("mbox range: temp file + FILDES", mbox, via_tempfile(engine, work)),
            transfer_run("mbox range: memfd + FILDES", mbox, via_memfd(engine)),
            transfer_run("mbox range: INSTREAM sendfile", mbox, via_instream(sock)),
        ]

        rss_runs = []
        for name, target in (
            (f"Maildir {args.count} small", small),
            (f"Maildir {args.big} small", big),
            (f"mbox {args.count} small", small_mbox),
            (f"mbox {args.big} small", big_mbox),
        ):
            rss_runs.append({"name": name, **avtool_scan(sock, target, work)})
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def best(name: str) -> float:
        return max(float(r["rate"]) for r in rate_runs if r["name"] == name)  # type: ignore[arg-type]

    def best_scan(name: str) -> float:
        return max(float(r["scan_rate"]) for r in rate_runs if r["name"] == name)  # type: ignore[arg-type]

    clamd_rate = best("clamd MULTISCAN (alone)")
    ratio = round(best("avtool scan Maildir") / clamd_rate, 3)
    scan_ratio = round(best_scan("avtool scan Maildir") / clamd_rate, 3)
    rss = {str(r["name"]): float(r["peak_rss_mb"]) for r in rss_runs}  # type: ignore[arg-type]
    growth = {
        kind: round(rss[f"{kind} {args.big} small"] / rss[f"{kind} {args.count} small"] - 1, 3)
        for kind in ("Maildir", "mbox")
    }
    wrong = [
        str(r["name"])
        for r in rate_runs + transfers
        if "found" in r and r["name"] != "clamd MULTISCAN (alone)" and r["found"] != expected
    ]
    wrong += [
        str(r["name"])
        for r in rate_runs
        if r["name"] == "clamd MULTISCAN (alone)" and r["found"] != expected
    ]
    passed = {
        "scan_vs_multiscan": ratio >= TARGET_RATIO,
        "rss_flat": all(abs(g) <= TARGET_RSS for g in growth.values()),
    }
    report.update(
        {
            "rates": rate_runs,
            "mbox_transfer": transfers,
            "memory": rss_runs,
            "targets": {
                "scan_vs_multiscan": {
                    "value": ratio,
                    "scan_only": scan_ratio,
                    "target": f">= {TARGET_RATIO}",
                    "pass": passed["scan_vs_multiscan"],
                },
                "rss_growth": {
                    "value": growth,
                    "target": f"within {TARGET_RSS:.0%}",
                    "pass": passed["rss_flat"],
                },
            },
            "wrong_counts": wrong,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    info = report["machine"]
    corpus = report["corpus"]
    assert isinstance(info, dict) and isinstance(corpus, dict)
    print(f"machine: {info['nproc']} x {info['cpu']}; Python {info['python']}; {info['clamd']}")
    print(
        f"corpus: {args.count} messages, {corpus['bytes'] / 1e6:.0f} MB, {expected} infected; "
        f"small: {corpus['small_bytes'] / 1e6:.0f} MB ({args.count}), "
        f"{corpus['big_bytes'] / 1e6:.0f} MB ({args.big})"
    )
    head = f"{'run':34} {'jobs':>4} {'msg/s':>7} {'scan msg/s':>10} {'s':>7} "
    head += f"{'RSS MB':>7} {'found':>5}"
    print(head + "\n" + "-" * len(head))
    for r in rate_runs:
        print(
            f"{r['name']!s:34} {r.get('jobs', '-')!s:>4} {r['rate']!s:>7} "
            f"{r.get('scan_rate', '-')!s:>10} {r['seconds']!s:>7} {r.get('peak_rss_mb', '-')!s:>7} "
            f"{r['found']!s:>5}"
        )
    print()
    head = f"{'mbox transfer (4 threads)':34} {'msg/s':>7} {'client CPU ms/msg':>17} {'found':>5}"
    print(head + "\n" + "-" * len(head))
    for r in transfers:
        print(
            f"{r['name']!s:34} {r['rate']!s:>7} {r['client_cpu_ms_per_msg']!s:>17} "
            f"{r['found']!s:>5}"
        )
    print()
    head = f"{'memory (small messages)':34} {'msg/s':>7} {'peak RSS MB':>11}"
    print(head + "\n" + "-" * len(head))
    for r in rss_runs:
        print(f"{r['name']!s:34} {r['rate']!s:>7} {r['peak_rss_mb']!s:>11}")
    mark = {True: "ok", False: "MISSED"}
    print("targets:")
    print(
        f"  avtool scan / MULTISCAN: {ratio:.3f} (process wall time; scan alone {scan_ratio:.3f}) "
        f"(>= {TARGET_RATIO})  {mark[passed['scan_vs_multiscan']]}"
    )
    print(
        "  peak RSS growth 2,000 -> 20,000: "
        + ", ".join(f"{k} {v:+.1%}" for k, v in growth.items())
        + f" (within {TARGET_RSS:.0%})  {mark[passed['rss_flat']]}"
    )
    return verdict(passed, wrong, expected, args.out)


if __name__ == "__main__":
    sys.exit(main())
