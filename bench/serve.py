"""Daemon benchmark: `avtool serve` on its socket vs a raw FILDES loop, same corpus, same run.

One clamd (tests/support/clamd_harness.py, ``DisableCache yes``, MaxThreads 8) and the corpus of
bench/corpus.py, each message given a Courier control file in a spool dir. Measured, with 1 and 4
concurrent clients: the raw FILDES loop of docs/notes/clamav.md §3 (the engine's floor) and
``avtool serve --debug`` driven through its unix socket as Courier drives it (one connection per
message). Reported: messages/s, p50/p99, the daemon's CPU per message (its /proc utime+stime),
its peak RSS (VmHWM), and the ratio serve / raw FILDES (target >= 0.95).

    python bench/serve.py [--count 500] [--out bench/out/serve.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.corpus import generate  # noqa: E402
from bench.engine import Result, best, machine, raw_scanner, run, table  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402
from tests.support.serve import (  # noqa: E402
    Daemon,
    control_text,
    request_bytes,
    start_daemon,
)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spool_copy(paths: list[Path], spool: Path) -> list[tuple[Path, list[Path]]]:
    """Each corpus message as a data file with one control file, as Courier's submit leaves them."""
    jobs = []
    for i, path in enumerate(paths):
        d = spool / f"{i:06d}"
        d.mkdir(parents=True)
        data = d / f"D{i}"
        shutil.copyfile(path, data)
        ctl = d / f"{i}.ctl"
        ctl.write_text(control_text([f"user{i}@example.test"]))
        jobs.append((data, [ctl]))
    return jobs


def daemon_scanner(
    daemon: Daemon, jobs: dict[Path, tuple[Path, list[Path]]]
) -> Callable[[Path], bool]:
    def scan(path: Path) -> bool:
        data, ctls = jobs[path]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(daemon.socket_path))
            s.sendall(request_bytes(data, ctls))
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        if reply.startswith(b"550 "):
            return True
        if not reply.startswith(b"200 "):
            raise RuntimeError(f"{data}: {reply!r}")
        return False

    return scan


SERVE, RAW = "avtool serve (socket)", "raw FILDES (notes 3)"


def checkout(rev: str, where: Path) -> Path:
    """The avtool package of git revision ``rev`` under ``where`` (a dir for PYTHONPATH)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "avtool"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    where.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where)  # noqa: S202 - our own repository (3.11.2 has no filter=)
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "serve.json")
    parser.add_argument(
        "--baseline", metavar="REV", help="also an avtool serve of this git revision, same run"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="avb", dir="/tmp"))
    work.chmod(0o755)  # noqa: S103 - clamd's user traverses it
    server = ClamdServer(work / "clamd", disable_cache=True, max_threads=8)
    daemon: Daemon | None = None
    old: Daemon | None = None
    try:
        paths = generate(work / "corpus", args.count)
        server.start()
        sock = str(server.unix_socket)
        config = (
            f'[clamd]\nbackends = ["{sock}"]\n\n[serve]\nspool_dir = "@SPOOL@"\n'
            "\n[log]\nverbosity = 1\n"
        )
        # as Courier runs it (not --debug, which logs every step): fd 3 is passed, pid file set
        extra = ["--set", f"serve.pid_file={work}/avtool.pid", "--set", f"serve.pipe={work}/p"]
        daemon = start_daemon(config, workdir=work / "daemon", extra_args=extra)
        spooled = spool_copy(paths, daemon.spool.root)
        jobs = {data: (data, ctls) for data, ctls in spooled}
        data_paths = [data for data, _ in spooled]
        raw = raw_scanner(sock)
        serves = [(SERVE, daemon, daemon_scanner(daemon, jobs), data_paths)]
        if args.baseline:
            old = start_daemon(
                config,
                workdir=work / "baseline",
                extra_args=[
                    "--set",
                    f"serve.pid_file={work}/old.pid",
                    "--set",
                    f"serve.pipe={work}/q",
                ],
                env=dict(os.environ, PYTHONPATH=str(checkout(args.baseline, work / "old"))),
            )
            old_spooled = spool_copy(paths, old.spool.root)
            old_jobs = {data: (data, ctls) for data, ctls in old_spooled}
            old_paths = [data for data, _ in old_spooled]
            serves.append(
                (f"avtool serve @{args.baseline}", old, daemon_scanner(old, old_jobs), old_paths)
            )
        results: list[Result] = []
        for clients in (1, 4):
            for _ in range(2):  # interleaved: the ratio compares the best of each
                results.append(run(RAW, clients, data_paths, raw))
                for label, d, scan, files in serves:
                    before = proc_cpu_s(d.proc.pid)
                    r = run(label, clients, files, scan)
                    r.cpu_ms = round((proc_cpu_s(d.proc.pid) - before) / r.messages * 1000, 3)
                    r.peak_rss_mb = round(proc_hwm_mb(d.proc.pid), 1)
                    results.append(r)
        print(f"corpus: {len(paths)} messages; machine: {machine()}")
        print("CPU ms/msg and peak RSS of the serve rows are the daemon's own.")
        print(table(results))
        ratios = {}
        for clients in (1, 4):
            ratio = best(results, SERVE, clients).rate / best(results, RAW, clients).rate
            ratios[clients] = round(ratio, 3)
            verdict = "ok" if ratio >= 0.95 else "MISSED"
            print(f"serve / raw FILDES at {clients} client(s): {ratio:.3f} (>= 0.95) {verdict}")
            if args.baseline:
                cpus = [
                    min(r.cpu_ms or 0.0 for r in results if r.name == name and r.clients == clients)
                    for name in (SERVE, serves[1][0])
                ]
                print(f"daemon CPU ms/msg at {clients} client(s), this tree / "
                      f"{args.baseline}: {cpus[0]:.3f} / {cpus[1]:.3f}")  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "results": [asdict(r) for r in results],
                    "ratios": ratios,
                },
                indent=1,
            )
        )
    finally:
        for started in (daemon, old):
            if started is not None:
                started.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
