"""A first pass and clamd's MULTISCAN of the same mail, measured at the same moments: the client
runs as one process over all the mail, and about once a second it is stopped for clamd's
MULTISCAN of the next slice of the mail (one user's Maildir), then let go on (bench/rescan.py).

Why: on a shared VM the machine's speed moves by 10-30% within a minute. bench/rescan.py's
pairs compare whole runs of 20-30 s each, minutes apart; on such a machine their best of each
measures the machine as much as the client. In sessions 10 and 11 the bare FILDES client
itself, which keeps clamd as busy as its MULTISCAN does (0.96-0.98 of it in bench/alternate.py's
one-second runs), came out at 0.79-0.91 of MULTISCAN that way. Here both sides meet the
same machine, second by second, and the client is still one first pass over all the mail,
start-up and the state's last commit included.

How, for one run:

- The client starts. After ``interval`` seconds (at first 1 s, then the time the last slice's
  MULTISCAN took: a slice's worth of the client), it is stopped with SIGSTOP.
- Then the wait for clamd to finish the scans the client had sent (no thread of clamd running
  or in a disk wait, twice 1 ms apart: /proc/PID/task/*/stat). That wait counts as the
  client's time: clamd works on its scans then, with threads idling as the queue runs dry.
  In the client's favour, the other way: MULTISCAN starts and ends 20 times instead of once,
  each end with a CPU idle for at most one message's scan (a few ms a slice of about a
  second: under 0.5%, by estimate), less than the 0.2-1 s of draining a run charges to the
  client (measured).
- The slice's MULTISCAN is timed, the client continued (SIGCONT), and so on until it exits.
  Slices left then are MULTISCANned after it (counted, and shown as such).
- The client's time is its wall time less the MULTISCANs; MULTISCAN's is the sum of its
  slices. clamd's CPU is split the same way.

    python bench/interleave.py SOCKET ROOT  # the bare FILDES client as a process (fildes_floor)
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: bench/ imports from the repo root

from avtool.engine import Engine  # noqa: E402
from bench.scan import multiscan  # noqa: E402

Slice = tuple[Path, int]  # a directory MULTISCAN is sent, and how many messages it holds
BUSY = ("R", "D")  # proc(5) stat field 3: running, or in an uninterruptible (disk) wait


def run(
    cmd: Sequence[str],
    slices: Sequence[Slice],
    engine: Engine,
    clamd: int,
    *,
    out: Path,
    messages: int,
    interval: float = 1.0,
) -> dict[str, object]:
    """One client process (``cmd``, stdout to ``out``, over ``messages`` messages) against
    MULTISCAN of ``slices``, interleaved as the module docstring says; clamd is pid ``clamd``."""
    todo = list(slices)
    client_clamd = multi_clamd = multi_seconds = paused = drained = 0.0
    multi_found = multi_messages = after = stops = 0
    each: list[float] = []  # the interleaved slices' seconds, in order
    t0 = time.perf_counter()
    mark = cpu_of(clamd)
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.DEVNULL, cwd=REPO)
    pidfd = os.pidfd_open(proc.pid)
    try:
        exited = select.poll()
        exited.register(pidfd, select.POLLIN)
        while todo and not exited.poll(round(interval * 1000)):
            stopped = time.perf_counter()
            proc.send_signal(signal.SIGSTOP)
            wait_idle(clamd)
            start = time.perf_counter()
            drained += start - stopped
            cpu = cpu_of(clamd)
            client_clamd += cpu - mark
            where, count = todo.pop(0)
            alone = multiscan(engine, where, count)
            seconds = time.perf_counter() - start
            mark = cpu_of(clamd)
            multi_clamd += mark - cpu
            proc.send_signal(signal.SIGCONT)
            paused += time.perf_counter() - start
            stops += 1
            multi_seconds += seconds
            each.append(round(seconds, 4))
            multi_found += int(alone["found"])  # type: ignore[call-overload]
            multi_messages += count
            interval = seconds
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        os.close(pidfd)
        if proc.returncode is None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - t0
    client_clamd += cpu_of(clamd) - mark
    for where, count in todo:  # the client was done first: the rest, alone
        cpu = cpu_of(clamd)
        alone = multiscan(engine, where, count)
        multi_clamd += cpu_of(clamd) - cpu
        multi_seconds += float(alone["seconds"])  # type: ignore[arg-type]
        multi_found += int(alone["found"])  # type: ignore[call-overload]
        multi_messages += count
        after += 1
    seconds = wall - paused
    return {
        "client_seconds": round(seconds, 3),
        "client_rate": round(messages / seconds, 1),
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "client_clamd_cpu_s": round(client_clamd, 2),
        "client_exit": os.waitstatus_to_exitcode(status),
        "client_found": _found(out),
        "drain_seconds": round(drained, 3),  # in client_seconds
        "stops": stops,
        "multiscan_seconds": round(multi_seconds, 3),
        "multiscan_rate": round(multi_messages / multi_seconds, 1),
        "multiscan_clamd_cpu_s": round(multi_clamd, 2),
        "multiscan_messages": multi_messages,
        "multiscan_found": multi_found,
        "slices": len(slices),
        "slices_after": after,
        "slice_seconds": each,
        "ratio": round(messages / seconds / (multi_messages / multi_seconds), 3),
    }


def _found(out: Path) -> int | None:
    """What the client found, from its last line: a summary (``infected``) or main's (``found``)."""
    try:
        last = json.loads(out.read_bytes().splitlines()[-1])
    except (IndexError, ValueError):
        return None
    found = last.get("infected", last.get("found"))
    return found if isinstance(found, int) else None


def wait_idle(pid: int, timeout: float = 10.0) -> None:
    """Until no thread of process ``pid`` runs or waits on the disk, twice 1 ms apart."""
    end = time.monotonic() + timeout
    calm = 0
    while calm < 2 and time.monotonic() < end:
        calm = 0 if busy(pid) else calm + 1
        time.sleep(0.001)


def busy(pid: int) -> bool:
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        if text.rsplit(")", 1)[1].split(maxsplit=1)[0] in BUSY:
            return True
    return False


def cpu_of(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (proc(5): stat fields 14 and 15)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def user_slices(root: Path) -> list[Slice]:
    """Each user's Maildir under ``root`` (bench/rescan.py's mail), with its message count."""
    return [
        (md, sum(1 for sub in ("cur", "new") for _ in (md / sub).iterdir()))
        for md in sorted(p / "Maildir" for p in root.iterdir())
    ]


def main(argv: list[str]) -> int:
    """The bare FILDES client (bench/rescan.py fildes_floor) as a process, over ROOT's mail."""
    from bench.rescan import fildes_floor

    sock, root = argv
    files = sorted(p for md, _ in user_slices(Path(root)) for p in md.rglob("*") if p.is_file())
    result = fildes_floor(sock, files, None)
    print(f'{{"messages": {result["messages"]}, "found": {result["found"]}}}')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
