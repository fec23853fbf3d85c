"""A small delaying TCP proxy for loopback: each connection waits N ms before it reaches clamd.

avtool opens one connection per scan, so the delay is a per-request latency, as a clamd on
another host adds (connect, round trip, a busy network). It makes clamd, not this machine's two
CPUs, the bottleneck of bench/pool.py: with a delay, more backends give more throughput.

Loopback only: it listens on 127.0.0.1 (or ::1) and forwards to a loopback address. When
the upstream clamd is gone (connection refused) or drops the connection, the client's
connection is closed without a reply, as a dead remote clamd would leave it.

    python bench/delayproxy.py --upstream 127.0.0.1:3310 --delay-ms 20 [--seconds 600]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import selectors
import socket
import threading
import time

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host not in LOOPBACK and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{address}: loopback addresses only")
    return host, int(port)


class DelayProxy:
    """Listens on ``listen`` (port 0: any free one), forwards to ``upstream`` after ``delay``
    seconds per connection. At most ``max_connections`` at once (more wait in the backlog)."""

    def __init__(
        self,
        upstream: str,
        delay: float,
        *,
        listen: str = "127.0.0.1:0",
        max_connections: int = 64,
    ) -> None:
        self.upstream = _split(upstream)
        self.delay = delay
        host, port = _split(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.socket(family, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind((host, port))
        self._server.listen(128)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.connections = 0  # accepted
        self.refused = 0  # upstream refused or unreachable: client closed without a reply

    @property
    def address(self) -> str:
        host, port = self._server.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> DelayProxy:
        self._thread = threading.Thread(target=self._accept_loop, name="delayproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- work ---------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            self._slots.acquire()
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            with client:
                if self._stopping.wait(self.delay):
                    return
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    with self._lock:
                        self.refused += 1
                    return
                with upstream:
                    self._pump(client, upstream)
        finally:
            self._slots.release()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy both ways until both have ended (or 10 minutes: every loop is bounded)."""
        end = time.monotonic() + 600
        peers = {client: upstream, upstream: client}
        open_ = {client, upstream}
        with selectors.DefaultSelector() as sel:
            for s in open_:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
            while open_ and time.monotonic() < end and not self._stopping.is_set():
                for key, _ in sel.select(1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst = peers[src]
                    try:
                        data = src.recv(1 << 16)
                    except OSError:
                        data = b""
                    if data:
                        try:
                            dst.setblocking(True)
                            dst.sendall(data)
                            dst.setblocking(False)
                        except OSError:
                            return  # the other side is gone: close both
                        continue
                    sel.unregister(src)
                    open_.discard(src)
                    if src is upstream:
                        return  # clamd has answered (or died): close the client's side too
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="loopback host:port of clamd")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = parser.parse_args(argv)
    with DelayProxy(args.upstream, args.delay_ms / 1000, listen=args.listen) as proxy:
        print(f"listening on {proxy.address} -> {args.upstream}, +{args.delay_ms:g} ms", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
