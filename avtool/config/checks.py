"""The cross-key checks: each reads a resolved Config (kinds.Resolved) and returns a problem
text or None. Config.resolve runs every one of ``CHECKS`` (keys.py holds the keys themselves)."""

from __future__ import annotations

from collections.abc import Callable

from avtool.config.keys import BACKENDS, CONNECT_TIMEOUT, MESSAGE_TIMEOUT, SCAN_TIMEOUT, TRANSFER
from avtool.config.kinds import Resolved


# ---- cross-key checks: each returns a problem text or None -------------------------------------
def _fildes_needs_unix(cfg: Resolved) -> str | None:
    tcp = [b for b in cfg[BACKENDS] if not b.startswith("/")]
    if cfg[TRANSFER] == "fildes" and tcp:
        return (
            f"clamd.transfer: fildes works on unix sockets only, but clamd.backends has "
            f"{', '.join(tcp)} ({cfg.source(TRANSFER)})"
        )
    return None


def _connect_within_scan(cfg: Resolved) -> str | None:
    if cfg[CONNECT_TIMEOUT] > cfg[SCAN_TIMEOUT]:
        return (
            f"clamd.connect_timeout: {cfg[CONNECT_TIMEOUT]:g} s is longer than "
            f"clamd.scan_timeout {cfg[SCAN_TIMEOUT]:g} s ({cfg.source(CONNECT_TIMEOUT)})"
        )
    return None


def _scan_within_message(cfg: Resolved) -> str | None:
    if cfg[SCAN_TIMEOUT] > cfg[MESSAGE_TIMEOUT]:
        return (
            f"clamd.scan_timeout: {cfg[SCAN_TIMEOUT]:g} s is longer than serve.message_timeout "
            f"{cfg[MESSAGE_TIMEOUT]:g} s: it would cut every slow scan ({cfg.source(SCAN_TIMEOUT)})"
        )
    return None


CHECKS: list[Callable[[Resolved], str | None]] = [
    _fildes_needs_unix,
    _connect_within_scan,
    _scan_within_message,
]
