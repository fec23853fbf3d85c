"""Soak: the filter daemon at a steady rate for a long time, a virus reload every minute.

A real clamd (tests/support/clamd_harness.py) and a real ``avtool serve --debug`` (the one the
integration tests start, tests/support/serve.py), driven through its unix socket
exactly as Courier's submit drives it: a fresh data file and control file per message in a spool
dir, one connection per message, the reply read to its end. 2% of the messages carry EICAR.
Every minute ``avtool sig -p PID reload virus`` makes every clamd reload and waits for the
daemon's answer. Every few seconds the daemon's RSS, open descriptors (/proc/PID/fd) and threads
are sampled.

Why the socket and not SMTP through Courier: Courier is one installation shared by everyone on
the machine, and a benchmark that goes through it must hold its lock for the whole run, which
would block every other Courier test for 30 minutes. What leaks, if anything does, is the
daemon's: the requests it gets here are byte for byte what Courier sends (tests/e2e prove the
two agree), and bench/faults.py covers the path through Courier.

Verdict: each series is flat when the median of its last quarter is within a tolerance of the
median of its first quarter (RSS: +10% or +4 MB, whichever is larger; fds and threads: +2),
with the least-squares slope printed per hour. Writes CSV, JSON and a small PNG (matplotlib,
the optional ``bench`` extra: ``pip install -e '.[bench]'``; without it, no PNG).

    python bench/soak.py [--minutes 30] [--rate 8] [--reload-every 60] [--png docs/soak.png]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import machine  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402
from tests.support.serve import (  # noqa: E402
    EICAR,
    Daemon,
    config_for,
    control_text,
    mail,
    request_bytes,
    start_daemon,
)

OUT = REPO / "bench" / "out"
AVTOOL = [sys.executable, "-m", "avtool"]


@dataclass
class Sample:
    t: float  # seconds since the start
    rss_mb: float
    fds: int
    threads: int
    clamd_rss_mb: float
    sent: int


@dataclass
class Tally:
    sent: int = 0
    clean: int = 0  # 200
    rejected: int = 0  # 550 (the infected ones)
    deferred: int = 0  # 4xx (counted; a soak should see none)
    wrong: list[str] = field(default_factory=list)  # a reply that contradicts the message
    reloads: int = 0
    reload_failures: list[str] = field(default_factory=list)
    reload_s: list[float] = field(default_factory=list)


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def sample(daemon_pid: int, clamd_pid: int | None, started: float, sent: int) -> Sample:
    status = proc_status(daemon_pid)
    clamd_rss = 0.0
    if clamd_pid is not None:
        with contextlib.suppress(OSError, KeyError):
            clamd_rss = int(proc_status(clamd_pid)["VmRSS"].split()[0]) / 1024
    return Sample(
        t=round(time.monotonic() - started, 2),
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        fds=len(os.listdir(f"/proc/{daemon_pid}/fd")),
        threads=int(status["Threads"]),
        clamd_rss_mb=round(clamd_rss, 1),
        sent=sent,
    )


class Sender:
    """Sends messages at ``rate`` per second until ``until`` (monotonic), at most ``limit``."""

    def __init__(self, daemon: Daemon, spool: Path, rate: float, infected: float) -> None:
        self.daemon = daemon
        self.spool = spool
        self.rate = rate
        self.infected = infected
        self.tally = Tally()
        self.lock = threading.Lock()
        self.random = random.Random(7)  # the same mix in every run

    def one(self, i: int) -> None:
        bad = self.random.random() < self.infected
        d = self.spool / f"{i % 1000:06d}"
        d.mkdir(exist_ok=True)
        data, ctl = d / f"D{i}", d / f"{i}.ctl"
        body = b"Soak message %d.\n" % i + b"Lorem ipsum dolor sit amet.\n" * 40
        data.write_bytes(mail(body, f"soak {i}", EICAR if bad else None))
        ctl.write_text(control_text([f"user{i % 50}@example.test"]))
        try:
            reply = self.daemon.ask(request_bytes(data, [ctl]), timeout=60)
        except OSError as e:
            reply = f"no reply: {e}"
        finally:
            data.unlink(missing_ok=True)
            ctl.unlink(missing_ok=True)
        with self.lock:
            t = self.tally
            t.sent += 1
            if reply.startswith("4"):
                t.deferred += 1
            elif bad and reply.startswith("550 "):
                t.rejected += 1
            elif not bad and reply.startswith("200 "):
                t.clean += 1
            else:
                t.wrong.append(f"{'infected' if bad else 'clean'} {i}: {reply.strip()[:120]}")

    def run(self, until: float, limit: int) -> None:
        """One message every 1/rate s on a fixed schedule (a late one does not shift the next)."""
        start = time.monotonic()
        for i in range(limit):
            due = start + i / self.rate
            now = time.monotonic()
            if due >= until or now >= until:
                return
            if due > now:
                time.sleep(due - now)
            self.one(i)


def reload_virus(daemon: Daemon, tally: Tally) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [*AVTOOL, "sig", "-p", str(daemon.proc.pid), "-t", "60", "reload", "virus"],
        cwd=daemon.workdir,  # --debug answers on ./avtool_sig.pipe in the daemon's dir
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    tally.reloads += 1
    tally.reload_s.append(round(time.monotonic() - started, 2))
    if done.returncode != 0:
        tally.reload_failures.append(
            f"exit {done.returncode}: {(done.stdout + done.stderr)[-200:]}"
        )


def flatness(samples: list[Sample]) -> dict[str, dict[str, float | bool]]:
    """First vs last quarter (medians) and the least-squares slope per hour, per series."""
    result: dict[str, dict[str, float | bool]] = {}
    quarter = max(1, len(samples) // 4)
    for name, pad in (("rss_mb", None), ("fds", 2.0), ("threads", 2.0)):
        ys = [float(getattr(s, name)) for s in samples]
        xs = [s.t for s in samples]
        first = statistics.median(ys[:quarter])
        last = statistics.median(ys[-quarter:])
        slope = 0.0
        if len(xs) > 1 and max(xs) > min(xs):
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            var = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600
        allowed = max(first * 0.10, 4.0) if pad is None else pad
        result[name] = {
            "first_quarter": round(first, 2),
            "last_quarter": round(last, 2),
            "max": max(ys),
            "slope_per_hour": round(slope, 3),
            "allowed": round(allowed, 2),
            "flat": last - first <= allowed,
        }
    return result


def plot(samples: list[Sample], reload_times: list[float], path: Path, title: str) -> bool:
    """A small PNG: RSS, fds and threads over minutes, reloads as faint lines. False without
    matplotlib (the optional ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    minutes = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(6, 4.2), dpi=80, sharex=True)
    series = (
        ("rss_mb", "RSS MB", "tab:blue"),
        ("fds", "open fds", "tab:orange"),
        ("threads", "threads", "tab:green"),
    )
    for ax, (name, label, colour) in zip(axes, series, strict=True):
        ys = [getattr(s, name) for s in samples]
        ax.plot(minutes, ys, color=colour, linewidth=1.2)
        for r in reload_times:
            ax.axvline(r / 60, color="0.85", linewidth=0.6, zorder=0)
        ax.set_ylabel(label, fontsize=8)
        low, high = min(ys), max(ys)
        margin = max((high - low) * 0.5, 1.0 if name != "rss_mb" else 2.0)
        ax.set_ylim(max(0, low - margin), high + margin)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", color="0.92")
    axes[-1].set_xlabel("minutes (grey: avtool sig reload virus)", fontsize=8)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    duration = args.minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="avsoak", dir="/tmp"))
    workdir.chmod(0o755)  # noqa: S103 - clamd (user clamav) must reach its dir below it
    clamd = ClamdServer(workdir / "clamd", max_threads=4).start()
    daemon: Daemon | None = None
    samples: list[Sample] = []
    reload_times: list[float] = []
    try:
        daemon = start_daemon(config_for(str(clamd.unix_socket)), workdir=workdir / "d")
        sender = Sender(daemon, workdir / "d" / "spool", args.rate, args.infected)
        started = time.monotonic()
        until = started + duration
        limit = int(duration * args.rate) + 1
        threads = [threading.Thread(target=sender.run, args=(until, limit), name="sender")]
        for t in threads:
            t.start()
        next_sample = next_reload = started
        next_reload += args.reload_every
        print(f"soak: {args.minutes:g} min at {args.rate:g} msg/s, pid {daemon.proc.pid}")
        while time.monotonic() < until and daemon.proc.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(sample(daemon.proc.pid, clamd.pid, started, sender.tally.sent))
                next_sample += args.sample_every
                s = samples[-1]
                if len(samples) % max(1, int(60 / args.sample_every)) == 1:
                    print(
                        f"  {s.t / 60:5.1f} min  sent {s.sent:6d}  rss {s.rss_mb:6.1f} MB  "
                        f"fds {s.fds:3d}  threads {s.threads:3d}",
                        flush=True,
                    )
            if now >= next_reload:
                reload_times.append(now - started)
                reload_virus(daemon, sender.tally)
                next_reload += args.reload_every
            time.sleep(max(0.0, min(next_sample, next_reload, until) - time.monotonic()))
        for t in threads:
            t.join(90)
        if daemon.proc.poll() is None:
            samples.append(sample(daemon.proc.pid, clamd.pid, started, sender.tally.sent))
        crashed = daemon.proc.poll() is not None
        exit_code = daemon.stop(30) if not crashed else daemon.proc.returncode
    finally:
        if daemon is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        clamd.stop()
    tally = sender.tally
    verdict = flatness(samples)
    elapsed = samples[-1].t if samples else 0.0
    ok = (
        not crashed
        and exit_code == 0
        and not tally.wrong
        and not tally.reload_failures
        and all(v["flat"] for v in verdict.values())
    )
    title = (
        f"avtool serve soak: {elapsed / 60:.0f} min, {tally.sent} msgs "
        f"({tally.sent / max(elapsed, 1):.1f}/s), {tally.reloads} reloads"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "soak.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(samples[0])) if samples else ["t"])
        writer.writeheader()
        for s in samples:
            writer.writerow(asdict(s))
    png = args.png or args.out / "soak.png"
    plotted = plot(samples, reload_times, png, title)
    report = {
        "machine": machine(),
        "minutes": args.minutes,
        "rate": args.rate,
        "elapsed_s": elapsed,
        "tally": asdict(tally),
        "daemon_exit": exit_code,
        "flatness": verdict,
        "png": str(png) if plotted else None,
        "ok": ok,
    }
    (args.out / "soak.json").write_text(json.dumps(report, indent=1))
    print(title)
    print(
        f"replies: {tally.clean} clean 200, {tally.rejected} infected 550, {tally.deferred} 4xx, "
        f"{len(tally.wrong)} wrong; reloads {tally.reloads} "
        f"(failed {len(tally.reload_failures)}, max {max(tally.reload_s, default=0):.2f} s)"
    )
    for name, v in verdict.items():
        print(
            f"{name:8} first quarter {v['first_quarter']:8.2f}  last quarter "
            f"{v['last_quarter']:8.2f}  max {v['max']:8.2f}  slope {v['slope_per_hour']:+8.3f}/h"
            f"  {'flat' if v['flat'] else 'GROWING'} (allowed +{v['allowed']})"
        )
    for w in tally.wrong[:5] + tally.reload_failures[:5]:
        print(f"  problem: {w}")
    print(
        f"daemon exit status {exit_code}; csv {args.out / 'soak.csv'}; "
        f"png {png if plotted else '-'}"
    )
    print(f"machine: {machine()}")
    print("soak: ok" if ok else "soak: FAILED")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=8.0, help="messages per second")
    parser.add_argument("--infected", type=float, default=0.02, help="fraction with EICAR")
    parser.add_argument("--reload-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--png", type=Path, default=None, help="default: OUT/soak.png")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60 or not 0 < args.rate <= 200:
        parser.error("--minutes in (0, 1440], --rate in (0, 200]")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
