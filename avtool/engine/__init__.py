"""ClamAV through clamd: FILDES, INSTREAM and SCAN, commands, and a pool of backends.

``Engine.from_config(cfg).scan(fd)`` gives a Verdict and never raises for a scan outcome.
Modules: verdict.py (results), replies.py (parsing, pure), session.py (every byte to and from
clamd), client.py (commands on the ``clamd`` package's classes), backend.py (one address),
failover.py (the failover rules, without I/O), engine.py (balance, and the blocking driver of
the failover), pending.py (the loop's driver of the failover).
"""

from avtool.engine.backend import Backend, BackendInfo
from avtool.engine.engine import Engine
from avtool.engine.verdict import Clean, Failed, Infected, Unchecked, Verdict

__all__ = [
    "Backend",
    "BackendInfo",
    "Clean",
    "Engine",
    "Failed",
    "Infected",
    "Unchecked",
    "Verdict",
]
