"""A /dev/log sink for containers without a syslog daemon (docs/notes/courier.md pitfall 9).

Every Courier daemon logs only through syslog(3), and a filter's stderr reaches syslog through
courierlogger, so without this the e2e tests could not see a single diagnostic. Each datagram
becomes one line of the log file, as syslog(3) sent it without the ``<PRI>`` prefix.

    python3 syslog_sink.py --socket /dev/log --log FILE --pid FILE

Started in the background by ``courier.sh up`` only when nothing listens on /dev/log; it stops
on SIGTERM and removes its socket. Standard library only: it runs under /usr/bin/python3.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import sys

_PRI = re.compile(rb"^<\d{1,3}>")


def listening(path: str) -> bool:
    """Whether some process already receives datagrams on ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/dev/log")
    parser.add_argument("--log")
    parser.add_argument("--pid")
    parser.add_argument("--check", action="store_true", help="exit 0 if something listens")
    args = parser.parse_args()
    if args.check:
        return 0 if listening(args.socket) else 1
    if not args.log:
        parser.error("--log is required")
    if listening(args.socket):
        print(f"syslog_sink: {args.socket} already has a listener", file=sys.stderr)
        return 1

    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)  # a stale socket with no listener
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(args.socket)
    os.chmod(args.socket, 0o666)  # noqa: S103 - /dev/log is for everyone: courier logs as courier
    os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
    if args.pid:
        with open(args.pid, "w") as f:
            f.write(f"{os.getpid()}\n")

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        with open(args.log, "ab", buffering=0) as log:
            while True:
                data = sock.recv(65536)
                # syslog(3) already starts the message with its time stamp
                line = _PRI.sub(b"", data).rstrip(b"\0\n").replace(b"\n", b" ")
                log.write(line + b"\n")
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(args.socket)
        if args.pid:
            with contextlib.suppress(OSError):
                os.unlink(args.pid)


if __name__ == "__main__":
    sys.exit(main())
