"""``avtool serve``: the Courier global filter daemon.

Lifecycle (courierfilter(8); docs/notes/courier.md §3): resolve config -> ping clamd (warn only) ->
pid file -> bind ``.NAME`` -> listen -> chmod 0660 -> rename to ``NAME`` -> unlink ``NAME`` in
the other socket dir -> close fd 3 -> serve until stdin EOF, SIGTERM or SIGQUIT -> refuse new
connections first (shutdown; the socket file stays, so Courier answers 432 and never lets mail
through unfiltered) -> drain messages in flight within serve.drain_timeout -> remove pid file
(and, with --debug only, the socket) -> exit 0.

Concurrency: one event loop (loop.py, on intake.py) accepts, reads requests, scans by FILDES
over kept-open clamd sessions and answers, without a thread per connection; worker threads
(workers.py, a bounded queue) take what blocks (completing a quarantine, a drop or header
fields; every message when a clamd is reached over TCP). ``serve.max_scans`` bounds the scans
of both (slots.py), ``serve.read_timeout`` a request. This module wires them: the loop gets
the listener, this server as the source of the current pipeline (a reload swaps it), the
stats, the slots, its limits and the wake pipe, and knows nothing else of the server.

Signal handlers only set flags and wake the main thread: SIGHUP reloads config and virus DB,
SIGUSR1 the config, SIGUSR2 the virus DB, SIGURG asks for the counters (ignored by default, so
harmless sent to a wrong pid). The reload thread answers over the ``sig`` pipe (control/fifo.py;
the signals are control/wire.py's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import threading
from pathlib import Path
from types import FrameType

from avtool.config import Config
from avtool.config import keys as K
from avtool.control.fifo import DEBUG_PIPE
from avtool.control.pidfile import PidFile
from avtool.control.wire import RELOAD_SIGNALS, STATS_SIGNAL
from avtool.daemon.loop import Loop
from avtool.daemon.options import Options
from avtool.daemon.pipeline import Pipeline
from avtool.daemon.reload import Reloader
from avtool.daemon.slots import Slots, scan_slots
from avtool.daemon.stats import Stats
from avtool.engine import Engine
from avtool.errors import UsageError

log = logging.getLogger("avtool")
COURIERFILTER_FD = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT)


def fd3_open() -> bool:
    """Call first thing: later, fd 3 may be any file this process opened."""
    try:
        os.fstat(COURIERFILTER_FD)
    except OSError:
        return False
    return True


class FilterServer:
    """One filter daemon. ``start()`` returns once the socket accepts; ``run()`` until stopped."""

    def __init__(self, cfg: Config, options: Options) -> None:
        self.cfg = cfg
        self.options = options
        self.stats = Stats()
        self.pipeline = Pipeline(cfg, Engine.from_config(cfg), name=options.name)
        self.slots = Slots(scan_slots(cfg))  # one limiter for the loop and the workers
        self.readers = cfg[K.MAX_CONNECTIONS] or max(16, 4 * self.slots.size)
        self.pid_file = None if options.debug else PidFile(Path(cfg[K.PID_FILE]))
        self.pipe = Path(DEBUG_PIPE) if options.debug else Path(cfg[K.PIPE])
        self.reloader = Reloader(self)
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self.socket_path: Path | None = None
        self.wake_r, self.wake_w = os.pipe()
        self.old_handlers: dict[int, object] = {}

    # ---- start ----------------------------------------------------------------------------------
    def socket_dirs(self) -> tuple[Path, Path | None]:
        """(where our socket goes, the other Courier socket dir to clean)."""
        if self.options.socket_dir is not None:
            return self.options.socket_dir, None
        base = Path(self.cfg[K.COURIER_DIR])
        ours = self.cfg[K.FILTER_DIR]
        other = "filters" if ours == "allfilters" else "allfilters"
        return base / ours, base / other

    def start(self) -> None:
        fd3 = self.options.fd3
        if not self.options.debug and not fd3 and not self.cfg[K.MANUAL_START]:
            raise UsageError(
                "fd 3 is not open: avtool serve is started by courierfilter "
                "(`filterctl start avtool`). To try it by hand: avtool serve --debug "
                "--socket-dir DIR; to allow a manual start: serve.manual_start = true"
            )
        if fd3:
            os.set_inheritable(COURIERFILTER_FD, False)  # no child may keep courierfilter waiting
        self._check_clamd()
        if self.pid_file is not None:
            self.pid_file.create()
        try:
            self.listener = self._bind()
            self._install_signals()
            self.loop = Loop(  # workers start here, the loop in run()
                self.listener,
                self,
                self.stats,
                self.slots,
                readers=self.readers,
                wake=(self.wake_r, self.wake_w),
                stopping=self.stopping,
            )
            self.reloader.start()
        except BaseException:
            self._release()  # nothing of a failed start stays behind (its socket refuses)
            raise
        if fd3:
            with contextlib.suppress(OSError):
                os.close(COURIERFILTER_FD)  # courierfilter start waits for this: we are ready
        log.info("listening on %s (pid %d)", self.socket_path, os.getpid())

    def _check_clamd(self) -> None:
        for backend in self.pipeline.engine.backends:
            try:
                backend.ping()
            except Exception as e:  # noqa: BLE001 - clamd may come later; mail defers until then
                log.warning("clamd %s does not answer yet: %s", backend.address, e)

    def _bind(self) -> socket.socket:
        directory, other = self.socket_dirs()
        name = self.options.name
        if not name or "/" in name or name.startswith("."):
            raise UsageError(f"bad filter name {name!r}")
        hidden, final = directory / f".{name}", directory / name
        if len(bytes(final)) > 107:
            raise UsageError(f"{final}: socket path too long (unix sockets take 107 bytes)")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(hidden)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(hidden))
            sock.listen(128)
            os.chmod(hidden, 0o660)
            os.rename(hidden, final)
        except OSError as e:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(hidden)
            raise UsageError(f"{final}: cannot install the filter socket: {e.strerror}") from e
        if other is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(other / name)
        self.socket_path = final
        return sock

    def _install_signals(self) -> None:
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)  # a signal wakes the main thread's select()
        for sig in (*STOP_SIGNALS, *RELOAD_SIGNALS, STATS_SIGNAL):
            self.old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Only set flags (design.md, convention 7); the main loop and the reloader act."""
        if (asked := RELOAD_SIGNALS.get(signal.Signals(signum))) is not None:
            self.reloader.request(asked.config, asked.virus)
        elif signum == STATS_SIGNAL:
            self.reloader.request_stats()
        else:
            self.stopping.set()

    # ---- serve ----------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stdin EOF (courierfilter(8): how it stops a filter) or a stop signal,
        then drain and stop."""
        try:
            self.loop.run(watch_stdin=_watchable(0))
        finally:
            self.stop()

    def stop(self) -> None:
        """After the loop: it refused new connections and drained what was in flight."""
        self.stopping.set()
        self._release()
        log.info("stopped")

    def _release(self) -> None:
        """Give back what start() took: the listener (its file stays under courierfilter),
        the reloader, the pid file, the signal handlers and the wake pipe."""
        if self.listener is not None:
            self.listener.close()
        if self.socket_path is not None and self.options.debug:
            # By hand (tavfilter): tidy up. Under courierfilter the dead socket keeps failing closed
            # (432) until the filter is started again; filterctl stop removes it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
        self.reloader.stop()
        if self.pid_file is not None:
            self.pid_file.remove()
        if self.old_handlers:
            signal.set_wakeup_fd(-1)
        for sig, handler in self.old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self.old_handlers.clear()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _watchable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def serve(cfg: Config, options: Options) -> None:
    """Run the daemon until it is told to stop; raise an AvtoolError when it cannot start."""
    server = FilterServer(cfg, options)
    server.start()
    server.run()
