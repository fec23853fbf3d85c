"""Daemon-side reloads (SIGHUP both, SIGUSR1 config, SIGUSR2 virus DB), answered over ipc.Answer.

Config: resolve again as at start; on any error keep the old Config and list every problem.
Virus: RELOAD every clamd, then wait (bounded) until VERSION shows the database on disk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from avtool import logs
from avtool.config import Config
from avtool.config import keys as K
from avtool.config.kinds import KEYS, Key
from avtool.control.ipc import Answer
from avtool.daemon.options import Options
from avtool.daemon.pipeline import Pipeline
from avtool.daemon.stats import Stats
from avtool.engine import Engine
from avtool.engine.clamdconf import conf_for, disk_db_version, running_clamd_confs
from avtool.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from avtool.engine import Backend

log = logging.getLogger("avtool")
# serve.max_connections sizes the worker threads, started once.
RESTART_KEYS: tuple[Key[Any], ...] = (
    K.FILTER_DIR, K.COURIER_DIR, K.PID_FILE, K.PIPE, K.MAX_SCANS, K.MAX_CONNECTIONS,
)  # fmt: skip
SETTLE_S = 1.0  # no version to watch: clamd swaps a small DB in ~50 ms (notes/clamav.md §2)


class Daemon(Protocol):
    """What a reload reads and swaps: server.FilterServer is one."""

    cfg: Config
    pipeline: Pipeline  # swapped whole: a message keeps the one it began with
    options: Options
    stats: Stats
    pipe: Path  # where the answers go (ipc.Answer)
    socket_path: Path | None


class Reloader:
    """A thread that carries out reload and stats requests, one at a time, off the main thread."""

    def __init__(self, server: Daemon) -> None:
        self.server = server
        self.event = threading.Event()
        self.want_config = False
        self.want_virus = False
        self.want_stats = False
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="reload", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped = True
        self.event.set()

    def request(self, config: bool, virus: bool) -> None:
        """From a signal handler: only set flags (design.md, convention 7)."""
        self.want_config |= config
        self.want_virus |= virus
        self.event.set()

    def request_stats(self) -> None:
        """From the SIGURG handler (``avtool sig stats``): only set a flag."""
        self.want_stats = True
        self.event.set()

    def _loop(self) -> None:
        while True:
            self.event.wait()
            self.event.clear()
            if self.stopped:
                return
            try:
                if self.want_stats:
                    self.want_stats = False
                    self.answer_stats(self.server.stats.snapshot())
                config, virus = self.want_config, self.want_virus
                self.want_config = self.want_virus = False
                if config or virus:
                    self.reload(config, virus)
            except Exception:  # noqa: BLE001 - a failed reload must not end later reloads
                log.exception("reload failed")

    def answer_stats(self, snapshot: dict[str, float | int | None]) -> None:
        """Counters as ``name value`` lines, then one ``clamd`` line per backend."""
        answer = Answer(self.server.pipe)
        answer.line(f"pid {os.getpid()}")
        answer.line(f"socket {self.server.socket_path}")
        for name, value in snapshot.items():
            answer.line(f"{name} {'-' if value is None else value}")
        for backend in self.server.pipeline.engine.backends:
            info = backend.describe()
            answer.line(
                f"clamd {backend.address} reachable={'yes' if info.reachable else 'no'} "
                f"scans={backend.scans} errors={backend.errors} in_flight={backend.in_flight} "
                f"aside={'yes' if backend.set_aside() else 'no'} "
                f"db={_db(info.db_version)} version={info.version or '-'}"
            )
        answer.finish(True)

    def reload(self, config: bool, virus: bool) -> bool:
        answer = Answer(self.server.pipe)
        ok = True
        try:
            if config:
                ok &= self.reload_config(answer)
            if virus:
                ok &= self.reload_virus(answer)
        finally:
            answer.finish(ok)
        return ok

    def reload_config(self, answer: Answer) -> bool:
        server = self.server
        options = server.options
        try:
            new = Config.resolve(options.config_path, role="daemon", overrides=options.overrides)
        except ConfigError as e:
            answer.line(f"config: NOT reloaded, {len(e.problems)} error(s); the old one stays")
            for problem in e.problems:
                answer.line(f"config error: {problem}")
            return False
        old = server.cfg
        changes = old.changes(new)
        engine_keys = [n for n in KEYS if n.startswith(("clamd.", "scan."))]
        engine = server.pipeline.engine
        if any(old.values[n] != new.values[n] for n in engine_keys):
            engine = Engine.from_config(new)
        server.cfg = new
        server.pipeline = Pipeline(new, engine, name=options.name)
        if old[K.VERBOSITY] != new[K.VERBOSITY] and not options.debug:
            logs.set_verbosity(new[K.VERBOSITY])  # --debug logs everything whatever the config
        answer.line(f"config: reloaded from {new.path or 'defaults'}, {len(changes)} change(s)")
        for change in changes:
            answer.line(f"config: {change}")
        for k in RESTART_KEYS:
            if old[k] != new[k]:
                answer.line(f"config: {k.name} takes effect at the next restart")
        return True

    def reload_virus(self, answer: Answer) -> bool:
        ok = True
        deadline_s = self.server.cfg[K.SCAN_TIMEOUT]
        confs = running_clamd_confs()
        for backend in self.server.pipeline.engine.backends:
            conf = conf_for(backend.address, confs)
            expected = disk_db_version(conf) if conf is not None else None
            try:
                line = _reload_one(backend, expected, deadline_s)
            except EngineError as e:
                ok = False
                line = f"virus: clamd {backend.address}: reload FAILED: {e}"
            answer.line(line)
            log.info("%s", line)
        return ok


def _reload_one(backend: Backend, expected: int | None, timeout: float) -> str:
    before = backend.describe()
    if not before.reachable:
        raise EngineError(before.error or "unreachable")
    started = time.monotonic()
    backend.reload()
    after = before
    confirmed = False
    while (elapsed := time.monotonic() - started) < timeout:
        time.sleep(0.1)
        after = backend.describe()
        if not after.reachable:
            continue
        if expected is not None:
            confirmed = after.db_version == expected
        elif before.db_version is not None:
            confirmed = after.db_version != before.db_version
        elif elapsed >= SETTLE_S:
            break  # nothing to watch: see SETTLE_S
        if confirmed:
            break
    seconds = time.monotonic() - started
    old, new = _db(before.db_version), _db(after.db_version)
    if confirmed or (expected is None and before.db_version is None):
        note = "" if confirmed else " (clamd reports no database version: waited 1 s)"
        return f"virus: clamd {backend.address}: database {old} -> {new} in {seconds:.1f} s{note}"
    if expected is None:
        return (
            f"virus: clamd {backend.address}: reloaded, database still {new} "
            f"after {seconds:.1f} s (no newer database?)"
        )
    raise EngineError(f"database {expected} not active after {seconds:.0f} s (still {new})")


def _db(version: int | None) -> str:
    return str(version) if version is not None else "unknown"
