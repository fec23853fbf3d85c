"""``avtool serve``: the Courier global filter daemon.

Lifecycle (courierfilter(8); notes/courier.md §3): resolve config -> ping clamd (warn only) ->
pid file -> bind ``.NAME`` -> listen -> chmod 0660 -> rename to ``NAME`` -> unlink ``NAME`` in
the other socket dir -> close fd 3 -> serve until stdin EOF, SIGTERM or SIGQUIT -> unlink the
socket first -> drain messages in flight within serve.drain_timeout -> remove pid file -> exit 0.

Signal handlers only set flags: SIGHUP reloads config and virus DB, SIGUSR1 the config, SIGUSR2
the virus DB, SIGURG asks for the counters; a coroutine does the work and answers over the
``sig`` pipe (ipc.py). SIGURG is ignored by default, so sent to a wrong pid it does no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from avtool import keys as K
from avtool.config import Config
from avtool.courier import protocol
from avtool.courier.protocol import Reply, Request, RequestReader
from avtool.engine import Engine
from avtool.errors import UsageError
from avtool.ipc import DEBUG_PIPE, PidFile
from avtool.pipeline import Pipeline
from avtool.reload import Reloader
from avtool.stats import Stats

log = logging.getLogger("avtool")
COURIERFILTER_FD = 3


@dataclass
class Options:
    """How the daemon was started; kept so that a config reload resolves the same way."""

    name: str = "avtool"
    debug: bool = False
    fd3: bool = False  # was fd 3 open when the process started (courierfilter's pipe)?
    socket_dir: Path | None = None
    config_path: Path | None = None
    overrides: dict[str, str] = field(default_factory=dict)


def fd3_open() -> bool:
    """Call first thing: later, fd 3 may be any file this process opened (the event loop's)."""
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
        slots = cfg[K.MAX_SCANS] or 2 * (os.cpu_count() or 1)
        self.slots = asyncio.Semaphore(slots)
        self.pool = ThreadPoolExecutor(max_workers=slots + 2, thread_name_prefix="scan")
        self.pid_file = None if options.debug else PidFile(Path(cfg[K.PID_FILE]))
        self.pipe = Path(DEBUG_PIPE) if options.debug else Path(cfg[K.PIPE])
        self.reloader = Reloader(self)
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.server: asyncio.base_events.Server | None = None
        self.socket_path: Path | None = None

    # ---- start ----------------------------------------------------------------------------------
    def socket_dirs(self) -> tuple[Path, Path | None]:
        """(where our socket goes, the other Courier socket dir to clean)."""
        if self.options.socket_dir is not None:
            return self.options.socket_dir, None
        base = Path(self.cfg[K.COURIER_DIR])
        ours = self.cfg[K.FILTER_DIR]
        other = "filters" if ours == "allfilters" else "allfilters"
        return base / ours, base / other

    async def start(self) -> None:
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
            sock = self._bind()
            self.server = await asyncio.start_unix_server(self._client, sock=sock)
        except BaseException:
            if self.pid_file is not None:
                self.pid_file.remove()
            raise
        self._install_signals()
        self._watch_stdin()
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
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGQUIT, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reloader.request, True, True)
        loop.add_signal_handler(signal.SIGUSR1, self.reloader.request, True, False)
        loop.add_signal_handler(signal.SIGUSR2, self.reloader.request, False, True)
        loop.add_signal_handler(signal.SIGURG, self.reloader.request_stats)

    def _watch_stdin(self) -> None:
        """courierfilter stops a filter by closing its stdin (courierfilter(8))."""
        try:
            mode = os.fstat(0).st_mode
        except OSError:
            return
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            return
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(0, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(0)
                self.stopping.set()

        try:
            loop.add_reader(0, readable)
        except (OSError, ValueError, PermissionError):
            log.debug("stdin cannot be watched; stop with SIGTERM")

    # ---- serve ----------------------------------------------------------------------------------
    async def run(self) -> None:
        reload_task = asyncio.create_task(self.reloader.loop())
        await self.stopping.wait()
        await self.stop()
        reload_task.cancel()

    async def stop(self) -> None:
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)  # first: Courier then gets 432, never mail unfiltered
        if self.server is not None:
            self.server.close()
        if self.in_flight:
            log.info("draining %d message(s)", len(self.in_flight))
            await asyncio.wait(self.in_flight, timeout=self.cfg[K.DRAIN_TIMEOUT])
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.pid_file is not None:
            self.pid_file.remove()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGURG):
            loop.remove_signal_handler(sig)
        log.info("stopped")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - always inside a task here
        self.in_flight.add(task)
        try:
            reply, unread = await self._serve_one(reader)
            writer.write(protocol.format_reply(reply))
            await writer.drain()
            if unread:
                await _discard_input(reader, writer)
        except (ConnectionError, OSError) as e:
            log.warning("client went away: %s", e)
        finally:
            self.in_flight.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        """The reply, and whether the client may still be sending (answered early)."""
        deadline = time.monotonic() + self.cfg[K.MESSAGE_TIMEOUT]
        try:
            request = await asyncio.wait_for(_read_request(reader), self.cfg[K.READ_TIMEOUT])
        except TimeoutError:
            log.warning("no complete request within serve.read_timeout")
            return Reply(432, "4.3.0 Timeout reading the filter request"), True
        except protocol.ProtocolError as e:
            log.warning("bad request: %s", e)
            return e.reply, True
        return await self._scan_in_slot(request, deadline), False

    async def _scan_in_slot(self, request: Request, deadline: float) -> Reply:
        """Wait for a scan slot and scan, all within the message deadline; past it, 432."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.slots.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.stats.count_timeout()
            log.warning("no scan slot within serve.message_timeout: %s", request.data_path)
            return Reply(432, "4.3.2 Virus scanner busy, try again later")
        pipeline = self.pipeline
        future = loop.run_in_executor(self.pool, pipeline.handle, request, deadline)
        future.add_done_callback(lambda _: self.slots.release())  # the thread holds the slot
        try:
            outcome = await asyncio.wait_for(
                asyncio.shield(future), max(0.0, deadline - time.monotonic()) + 1.0
            )
        except TimeoutError:
            self.stats.count_timeout()
            log.warning("message deadline passed: %s", request.data_path)
            return Reply(432, "4.3.2 Virus scan took too long, try again later")
        self.stats.record(outcome)
        return outcome.reply


async def _discard_input(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an early answer, read what the client still sends (bounded) before closing:
    closing with unread input makes the kernel send a reset, which can destroy the reply."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    budget = 4 << 20
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(1.0):
            while budget > 0 and (chunk := await reader.read(65536)):
                budget -= len(chunk)


async def _read_request(reader: asyncio.StreamReader) -> Request:
    parser = RequestReader()
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            raise protocol.ProtocolError(
                "connection closed before the blank line", Reply(432, "4.3.0 Incomplete request")
            )
        request = parser.feed(chunk)
        if request is not None:
            return request


def serve(cfg: Config, options: Options) -> None:
    """Run the daemon until it is told to stop; raise an AvtoolError when it cannot start."""

    async def main() -> None:
        server = FilterServer(cfg, options)
        await server.start()
        await server.run()

    asyncio.run(main())
