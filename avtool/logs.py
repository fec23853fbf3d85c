"""Logging to stderr, which courierfilter hands to syslog (docs/notes/courier.md §2), by
verbosity."""

from __future__ import annotations

import contextlib
import logging
import sys
import syslog
from typing import TextIO

# log.verbosity: 0 errors only, 1 one line per message, 3 debug; 2 is accepted (avfilter's scale
# has it, and configs written for it set it) and logs what 1 does. There was a DETAIL level
# between them that nothing emitted: the one line per message already says verdict, action,
# reply, size and scan time, and what more a message could tell (the backend that answered, the
# second look, the header edits) is the pipeline's and the engine's to log, at DEBUG.
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.INFO, 3: logging.DEBUG}


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
    root.setLevel(level if level is not None else level_of(verbosity))
    root.propagate = False
    global _direct
    _direct = (handler, name)


def level_of(verbosity: int) -> int:
    return LEVELS.get(verbosity, logging.DEBUG)


def set_verbosity(verbosity: int) -> None:
    """A reloaded ``log.verbosity``, applied to the running daemon's logger."""
    logging.getLogger("avtool").setLevel(level_of(verbosity))


# The handler and name that setup() installed, for line(); None until then (tests, libraries).
_direct: tuple[logging.StreamHandler[TextIO], str] | None = None


def line(logger: logging.Logger, level: int, text: str) -> None:
    """``logger.log(level, text)`` for the one line per message, written straight through the
    handler that setup() installed, in its format, without building a LogRecord (the daemon's
    largest cost per message after clamd's socket). Elsewhere: the usual logger.log."""
    if not logger.isEnabledFor(level):
        return
    direct = _direct
    if direct is None or logger.name != "avtool" or logger.handlers != [direct[0]]:
        logger.log(level, "%s", text)  # not the set-up that setup() made: respect it
        return
    handler, name = direct
    with handler.lock or contextlib.nullcontext():
        try:
            handler.stream.write(f"{name}: {logging.getLevelName(level)} {text}\n")
            handler.stream.flush()
        except (OSError, ValueError):
            # As logging.Handler.emit does (handleError): a line that cannot be written (stderr
            # closed or full) is lost, and the message it speaks of is still answered.
            pass


# logging levels as syslog(3) priorities, for audit()
_PRIORITY = {
    logging.DEBUG: syslog.LOG_DEBUG,
    logging.INFO: syslog.LOG_INFO,
    logging.WARNING: syslog.LOG_WARNING,
    logging.ERROR: syslog.LOG_ERR,
    logging.CRITICAL: syslog.LOG_CRIT,
}


def audit(logger: logging.Logger, level: int, text: str, *, tag: str = "avtool") -> None:
    """One line to syslog, facility mail, for what an admin did from a command (a quarantine
    release, forced or not): a command's stderr is a terminal, not the mail log, and the
    record must outlive it. Also to ``logger``, as any line. syslog(3) drops the line where
    no syslog daemon listens (containers: docs/notes/courier.md pitfall 9); it never fails."""
    logger.log(level, "%s", text)
    syslog.openlog(tag, syslog.LOG_PID, syslog.LOG_MAIL)
    syslog.syslog(_PRIORITY.get(level, syslog.LOG_NOTICE), text)
