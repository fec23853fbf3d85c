"""ClamAV through clamd: FILDES, INSTREAM and SCAN, commands, and a pool of backends.

``Engine.from_config(cfg).scan(fd)`` gives a Verdict and never raises for a scan outcome.
Modules: verdict.py (results), replies.py (parsing, pure), client.py (the wire protocol on the
``clamd`` package's classes), backend.py (one address), engine.py (failover and balance).
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
