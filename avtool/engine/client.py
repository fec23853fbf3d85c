"""clamd commands for one address, on top of the ``clamd`` package's client classes.

The package (1.0.2) has bugs that matter to a mail filter (docs/notes/clamav.md §3): connect()
before settimeout() (no connect timeout), send() instead of sendall(), 1 KiB INSTREAM chunks,
no FILDES, a greedy reply regex, and a socket stored on the instance (not thread-safe). These
subclasses keep its classes and attributes but replace every method that talks: each command
goes through session.py (the only module that talks to clamd) on a connection of its own,
bounded by a ``time.monotonic()`` deadline, so one instance serves any number of threads.
Replies are returned as raw bytes; replies.py interprets them. Scans go through the failover
machine (failover.py), not through these classes.
"""

from __future__ import annotations

import clamd

from avtool.engine import session


class _Wire:
    """What the unix and TCP clients share. Holds no socket between calls."""

    address: str
    connect_timeout: float

    def _init_socket(self) -> None:
        # Every inherited clamd-package method goes through here and stores the socket on self,
        # which breaks with threads (notes 3: 38 of 800 calls lost). None of them may run.
        raise TypeError("use the avtool.engine.client methods, not the clamd package's")

    def _close_socket(self) -> None:
        """Nothing is stored to close (the clamd package calls this in ``finally``)."""

    def command(self, cmd: str, deadline: float, *, until_eof: bool = False) -> bytes:
        """A plain command (PING, VERSION, RELOAD, STATS, MULTISCAN /dir ...): the raw reply;
        ``until_eof`` for the commands answered with one line per file and a close."""
        return session.command(
            self.address, self.connect_timeout, cmd, deadline, until_eof=until_eof
        )


class UnixClient(_Wire, clamd.ClamdUnixSocket):  # type: ignore[misc]
    """clamd on a unix socket."""

    def __init__(self, path: str, connect_timeout: float) -> None:
        super().__init__(path=path, timeout=connect_timeout)
        self.address = path
        self.connect_timeout = connect_timeout


class TcpClient(_Wire, clamd.ClamdNetworkSocket):  # type: ignore[misc]
    """clamd on ``host:port`` or ``[v6]:port``."""

    def __init__(self, address: str, connect_timeout: float) -> None:
        host, _, port = address.rpartition(":")
        super().__init__(host=host.strip("[]"), port=int(port), timeout=connect_timeout)
        self.address = address
        self.connect_timeout = connect_timeout
