"""Start-up benchmark: exec of Courier's wrapper (share/courier-filter.sh) until fd 3 is closed.

courierfilter(8) starts /usr/lib/courier/filters/avtool with fd 3 open and waits for it to close:
that is when the socket accepts mail. This benchmark renders the real wrapper with the repo's
.venv as prefix, gives it fd 3 as a pipe and a config (AVTOOL_CONFIG) whose socket, pid file and
pipe are in a temp Courier dir, with a real clamd (tests/support/clamd_harness.py; serve pings it
before it binds). Measured, --runs times each: exec to fd 3 closed (target <= 300 ms), and for scale
`python -c pass` and `python -c "import avtool.cli.app"`. The daemon is stopped by stdin EOF. Then
`python -X importtime` of the serve path lists the slowest imports.

    python bench/startup.py [--runs 15] [--out bench/out/startup.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import machine  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402
from tests.support.serve import spawn_fd3  # noqa: E402

TARGET_MS = 300.0
PY = str(REPO / ".venv" / "bin" / "python")


def wrapper(work: Path) -> Path:
    """share/courier-filter.sh with @PREFIX@ = the repo's venv, named as Courier names it."""
    text = (REPO / "share" / "courier-filter.sh").read_text()
    path = work / "filters" / "avtool"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("@PREFIX@", str(REPO / ".venv")))
    path.chmod(0o755)
    return path


def config(work: Path, clamd_socket: str) -> Path:
    courier = work / "courier"
    for d in ("allfilters", "filters", "tmp"):
        (courier / d).mkdir(parents=True, exist_ok=True)
    path = work / "avtool.conf"
    path.write_text(
        f'[clamd]\nbackends = ["{clamd_socket}"]\n\n'
        f'[serve]\ncourier_dir = "{courier}"\nspool_dir = "{courier / "tmp"}"\n'
        f'pid_file = "{work / "avtool.pid"}"\npipe = "{work / "avtool.pipe"}"\n'
    )
    return path


def start_once(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 20.0) -> float:
    """Seconds from exec to fd 3 closed; the daemon is then stopped by stdin EOF."""
    proc, seconds = spawn_fd3(cmd, log, env=env, timeout=timeout)
    assert proc.stdin is not None
    proc.stdin.close()  # courierfilter's stop
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"exit {proc.returncode}:\n{tail}")
    return seconds


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def slowest_imports(env: dict[str, str], n: int = 12) -> list[tuple[str, float]]:
    """Cumulative import time (ms) of the serve path (the app, then the server), slowest first."""
    code = "import avtool.cli.app, avtool.daemon.server"
    out = subprocess.run(
        [PY, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True, check=True
    ).stderr
    rows = []
    for line in out.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        try:
            rows.append((name.strip(), int(cumulative) / 1000))
        except ValueError:
            continue  # the header line
    rows.sort(key=lambda r: -r[1])
    return rows[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "startup.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="avu", dir="/tmp"))
    work.chmod(0o755)  # noqa: S103 - clamd's user traverses it
    server = ClamdServer(work / "clamd")
    try:
        server.start()
        script = wrapper(work)
        conf = config(work, str(server.unix_socket))
        # courierfilter's environment: nearly empty, PATH=/usr/bin:/bin (courierfilter(8))
        env = {"PATH": "/usr/bin:/bin", "AVTOOL_CONFIG": str(conf)}
        start_once([str(script)], env, work / "serve.log")  # warm the page cache and .pyc files
        runs: dict[str, list[float]] = {"wrapper to fd 3 closed": [], "python -c pass": []}
        runs["import avtool.cli.app"] = []
        for _ in range(args.runs):
            runs["wrapper to fd 3 closed"].append(
                start_once([str(script)], env, work / "serve.log")
            )
            runs["python -c pass"].append(timed([PY, "-c", "pass"], env))
            runs["import avtool.cli.app"].append(timed([PY, "-c", "import avtool.cli.app"], env))
        imports = slowest_imports(env)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = {
        name: {
            "median_ms": round(statistics.median(v) * 1000, 1),
            "min_ms": round(min(v) * 1000, 1),
            "max_ms": round(max(v) * 1000, 1),
        }
        for name, v in runs.items()
    }
    ready = summary["wrapper to fd 3 closed"]["median_ms"]
    info = machine()
    report = {
        "machine": info,
        "runs": args.runs,
        "summary": summary,
        "slowest_imports_ms": imports,
        "target": {"median_ms": ready, "target_ms": TARGET_MS, "pass": ready <= TARGET_MS},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {info['nproc']} x {info['cpu']}; Python {info['python']}; {info['clamd']}")
    print(f"{'':28} {'median ms':>10} {'min ms':>8} {'max ms':>8}   ({args.runs} runs)")
    for name, s in summary.items():
        print(f"{name:28} {s['median_ms']:10.1f} {s['min_ms']:8.1f} {s['max_ms']:8.1f}")
    print("slowest imports (cumulative ms) of avtool.cli.app:")
    for name, ms in imports:
        print(f"  {ms:7.1f}  {name}")
    verdict = "ok" if ready <= TARGET_MS else "MISSED"
    print(f"exec to fd 3 closed: median {ready:.0f} ms (<= {TARGET_MS:g}) {verdict}")
    print(f"written: {args.out}")
    return 0 if ready <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
