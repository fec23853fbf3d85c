"""Doctor checks about clamd: reachable, detects EICAR through our transfer mode, holds a
current database (doctor/database.py), and its own clamd.conf agrees with our policy and
limits (doctor/settings.py)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator

from avtool.config import Config
from avtool.config import keys as K
from avtool.config.kinds import Size
from avtool.doctor.database import check_database
from avtool.doctor.finding import Finding
from avtool.doctor.settings import check_alerts, check_limits
from avtool.engine import Clean, Engine, Failed, Infected, Unchecked
from avtool.engine.clamdconf import conf_for, find_clamd_confs
from avtool.errors import EngineError

# The EICAR test file, built in two parts so that this source file itself is not flagged.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def check_clamd(cfg: Config) -> Iterator[Finding]:
    """Per backend: PING, then (only if it answers) EICAR, database, settings and limits."""
    confs, problems = find_clamd_confs()
    for problem in problems:  # one line each; the backends it may belong to say no more
        yield Finding(
            "warn",
            f"{problem}: clamd's settings cannot be checked",
            "clamd.conf is read by clamd at start: make it readable and fix it (clamd.conf(5))",
        )
    with tempfile.NamedTemporaryFile(prefix="avtool-eicar-", suffix=".txt") as f:
        f.write(EICAR)
        f.flush()
        os.chmod(f.name, 0o644)  # transfer "scan" needs clamd's own user to read it
        for address in cfg[K.BACKENDS]:
            one = Engine.from_config(cfg.override(K.BACKENDS, (address,)))
            try:
                one.backends[0].ping()
            except EngineError as e:
                yield Finding(
                    "fail",
                    f"clamd {address} does not answer PING: {e}",
                    "start clamd, or set clamd.backends to the LocalSocket / TCPSocket "
                    "of its clamd.conf",
                )
                continue
            yield Finding("ok", f"clamd {address} answers PING")
            yield _eicar(cfg, one, address, f.fileno(), f.name)
            conf = conf_for(address, confs)
            yield from check_database(one.backends[0], conf, time.time())
            if conf is not None:
                yield from check_alerts(cfg, address, conf)
                yield from check_limits(cfg, address, conf, _mode(cfg, address))
            elif not problems:
                shown = Size().to_toml(cfg[K.MAX_SIZE]).strip('"')
                yield Finding(
                    "warn",
                    f"clamd {address}: its clamd.conf is not on this machine; cannot compare "
                    "its settings",
                    f"make sure its StreamMaxLength and MaxFileSize are >= scan.max_size "
                    f"({shown}) and AlertEncrypted, AlertExceedsMax are on",
                )


def _eicar(cfg: Config, one: Engine, address: str, fd: int, path: str) -> Finding:
    """The EICAR test file through the configured transfer mode."""
    verdict = one.scan(fd, path=path)
    mode = _mode(cfg, address)
    if isinstance(verdict, Infected):
        return Finding("ok", f"clamd {address} detects EICAR by {mode} ({verdict.names[0]})")
    if isinstance(verdict, Clean):
        return Finding(
            "fail",
            f"clamd {address} does not detect EICAR by {mode}",
            "clamd has no usable signatures: run freshclam, then `avtool sig reload virus`",
        )
    assert isinstance(verdict, Unchecked | Failed)  # noqa: S101 - the Verdict union
    return Finding(
        "fail",
        f"clamd {address}: EICAR by {mode} gave {verdict.reason}",
        _fix_for(verdict.reason, mode),
    )


CHECKS = [check_clamd]


def _mode(cfg: Config, address: str) -> str:
    transfer = cfg[K.TRANSFER]
    if transfer == "auto":
        return "FILDES" if address.startswith("/") else "INSTREAM"
    return transfer.upper()


def _fix_for(reason: str, mode: str) -> str:
    if "denied" in reason.lower() and mode == "SCAN":
        return 'clamd\'s user cannot read the file: use clamd.transfer = "auto" (FILDES/INSTREAM)'
    if "too large" in reason.lower():
        return "raise StreamMaxLength in clamd.conf"
    return "see clamd's log; check clamd.backends and clamd.transfer"
