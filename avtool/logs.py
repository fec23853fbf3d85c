"""Logging to stderr, which courierfilter hands to syslog (notes/courier.md §2), by verbosity."""

from __future__ import annotations

import logging
import sys

# log.verbosity: 0 errors only, 1 one line per message, 2 details, 3 debug (avfilter's levels).
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: 15, 3: logging.DEBUG}
logging.addLevelName(15, "DETAIL")


def setup(verbosity: int, *, name: str = "avtool", level: int | None = None) -> None:
    # Our format shows none of these: not computing them per record halves the cost of the one
    # line per message (the logging HOWTO's "Optimization"; findCaller walks the stack).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}: %(levelname)s %(message)s"))
    root = logging.getLogger("avtool")
    root.handlers[:] = [handler]
    root.setLevel(level if level is not None else LEVELS.get(verbosity, logging.DEBUG))
    root.propagate = False
