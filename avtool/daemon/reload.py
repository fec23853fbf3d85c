"""Daemon-side reloads (SIGHUP both, SIGUSR1 config, SIGUSR2 virus DB), answered over fifo.Answer.

Config: resolve again as at start; on any error keep the old Config and list every problem;
else apply each changed key as its reload kind says (config/kinds.py, Reload).
Virus: RELOAD every clamd, then wait (bounded) until VERSION shows the database on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from avtool import logs
from avtool.config import Config
from avtool.config import keys as K
from avtool.control.fifo import Answer
from avtool.daemon.options import Options
from avtool.daemon.pipeline import Pipeline
from avtool.daemon.stats import Stats
from avtool.engine import Engine
from avtool.engine.clamdconf import conf_for, disk_db_version, running_clamd_confs
from avtool.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from avtool.engine import Backend

log = logging.getLogger("avtool")
SETTLE_S = 1.0  # no version to watch: clamd swaps a small DB in ~50 ms (docs/notes/clamav.md §2)


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
                    self.answer_stats()
                config, virus = self.want_config, self.want_virus
                self.want_config = self.want_virus = False
                if config or virus:
                    self.reload(config, virus)
            except Exception:  # noqa: BLE001 - a failed reload must not end later reloads
                log.exception("reload failed")

    def answer_stats(self) -> None:
        """The counters, as control/wire.py's Stats lines (the client parses the same)."""
        server = self.server
        answer = Answer(server.pipe)
        stats = server.stats.answer(server.socket_path, server.pipeline.engine.backends)
        for line in stats.lines():
            answer.line(line)
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
        changed = old.changed(new)
        how = {k.reload for k in changed}  # what each key needs: config/kinds.py, Reload
        engine = Engine.from_config(new) if "engine" in how else server.pipeline.engine
        server.cfg = new  # "live" keys: read from here, or from the new Pipeline, per message
        server.pipeline = Pipeline(new, engine, name=options.name)
        if "log" in how and not options.debug:  # --debug logs everything whatever the config
            logs.set_verbosity(new[K.VERBOSITY])  # log.verbosity is the one "log" key
        answer.line(f"config: reloaded from {new.path or 'defaults'}, {len(changed)} change(s)")
        for change in old.changes(new):
            answer.line(f"config: {change}")
        for k in changed:
            if k.reload == "restart":
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
