"""Large mail: 50 MB and 200 MB messages through `avtool serve --debug`, by FILDES and INSTREAM.

A real clamd (tests/support/clamd_harness.py) with StreamMaxLength, MaxFileSize and MaxScanSize
large enough for 200 MB; one daemon per transfer: FILDES on clamd's unix socket, INSTREAM on its TCP
port (127.0.0.1). Each message is a mail with a base64 attachment of random bytes, put in the
daemon's spool with a control file and filtered through the daemon's socket as Courier does it. The
daemon's peak RSS (VmHWM, /proc) is read after each message: target < 60 MB, since the message is
handed over as a descriptor (FILDES) or streamed in chunks (INSTREAM), never read whole. A last
message carries EICAR after the bulk, so the verdict proves clamd saw it all.

    python bench/largemail.py [--sizes 50,200] [--out bench/out/largemail.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine import machine  # noqa: E402
from bench.serve import proc_hwm_mb  # noqa: E402
from tests.support.clamd_harness import ClamdServer  # noqa: E402
from tests.support.serve import EICAR, start_daemon  # noqa: E402

TARGET_MB = 60.0
LIMIT = "300M"


def write_mail(path: Path, size: int, *, eicar: bool = False) -> int:
    """A mail of about ``size`` bytes: text, then a base64 attachment of random bytes (written
    in 1 MB pieces), then with ``eicar`` a second attachment with the EICAR string."""
    with open(path, "wb") as f:
        f.write(
            b"From: big@example.com\nTo: rcpt@example.test\nSubject: large\n"
            b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n\n'
            b"--b1\nContent-Type: text/plain\n\nA large attachment.\n"
            b"--b1\nContent-Type: application/octet-stream\n"
            b'Content-Disposition: attachment; filename="big.bin"\n'
            b"Content-Transfer-Encoding: base64\n\n"
        )
        raw_piece = 57 * 13797  # 786 429 bytes -> 1 MiB + lines of base64
        while f.tell() < size - (2 << 20):
            f.write(base64.encodebytes(os.urandom(raw_piece)))
        if eicar:
            f.write(
                b"--b1\nContent-Type: application/octet-stream\n"
                b'Content-Disposition: attachment; filename="eicar.com"\n'
                b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(EICAR)
            )
        f.write(b"--b1--\n")
        return f.tell()


def daemon_config(backend: str) -> str:
    return (
        f'[clamd]\nbackends = ["{backend}"]\nscan_timeout = 600.0\n\n'
        f'[scan]\nmax_size = "{LIMIT}"\n\n'
        '[serve]\nspool_dir = "@SPOOL@"\nmessage_timeout = 900.0\n'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="MB, comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "largemail.json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="avl", dir="/tmp"))
    work.chmod(0o755)  # noqa: S103 - clamd's user traverses it
    server = ClamdServer(
        work / "clamd",
        stream_max=LIMIT,
        extra={"MaxFileSize": LIMIT, "MaxScanSize": "1000M"},
        disable_cache=True,
    )
    rows: list[dict[str, object]] = []
    try:
        server.start()
        transfers = {
            "FILDES (unix)": str(server.unix_socket),
            "INSTREAM (tcp 127.0.0.1)": server.tcp_address,
        }
        for transfer, backend in transfers.items():
            daemon = start_daemon(daemon_config(backend), workdir=work / transfer.split()[0])
            try:
                pid = daemon.proc.pid
                rows.append({"transfer": transfer, "message": "start", "hwm_mb": proc_hwm_mb(pid)})
                for mb in sizes:
                    for eicar in (False, True):
                        data, ctls = daemon.spool.message(b"")
                        size = write_mail(data, mb << 20, eicar=eicar)
                        t0 = time.perf_counter()
                        reply = daemon.ask(
                            b"".join(os.fsencode(p) + b"\n" for p in [data, *ctls]) + b"\n",
                            timeout=900,
                        )
                        seconds = time.perf_counter() - t0
                        data.unlink()  # 200 MB each: keep the disk use to one at a time
                        want = "5" if eicar else "2"
                        rows.append(
                            {
                                "transfer": transfer,
                                "message": f"{mb} MB" + (" + EICAR" if eicar else ""),
                                "bytes": size,
                                "seconds": round(seconds, 2),
                                "reply": reply.strip().splitlines()[0][:70],
                                "right": reply[:1] == want,
                                "hwm_mb": proc_hwm_mb(pid),
                            }
                        )
                        print(rows[-1], flush=True)
            finally:
                daemon.stop(60)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    peak = max(float(r["hwm_mb"]) for r in rows)  # type: ignore[arg-type]
    wrong = [r for r in rows if r.get("right") is False]
    info = machine()
    report = {
        "machine": info,
        "rows": rows,
        "peak_rss_mb": round(peak, 1),
        "target_mb": TARGET_MB,
        "pass": peak < TARGET_MB and not wrong,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {info['nproc']} x {info['cpu']}; Python {info['python']}; {info['clamd']}")
    print(f"{'transfer':26} {'message':16} {'seconds':>8} {'daemon VmHWM MB':>16}  reply")
    for r in rows:
        print(
            f"{r['transfer']:26} {r['message']:16} {r.get('seconds', '-'):>8} "
            f"{float(r['hwm_mb']):16.1f}  {r.get('reply', '')}"  # type: ignore[arg-type]
        )
    mark = "ok" if peak < TARGET_MB else "MISSED"
    print(f"daemon peak RSS: {peak:.1f} MB (< {TARGET_MB:g}) {mark}")
    if wrong:
        print(f"WRONG replies: {wrong}")
    print(f"written: {args.out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
