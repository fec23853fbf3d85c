"""Doctor checks about clamd: reachable, detects EICAR through our transfer mode, limits agree."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

from avtool import keys as K
from avtool.clamdconf import ClamdConf, conf_for, running_clamd_confs
from avtool.config import Config
from avtool.doctor import Finding
from avtool.engine import Clean, Engine, Failed, Infected, Unchecked
from avtool.errors import EngineError
from avtool.kinds import Size

# The EICAR test file, built in two parts so that this source file itself is not flagged.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def check_clamd(cfg: Config) -> Iterator[Finding]:
    """Per backend: PING, then (only if it answers) EICAR and limits."""
    confs = running_clamd_confs()
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
            yield _limits(cfg, address, confs)


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


def _limits(cfg: Config, address: str, confs: list[ClamdConf]) -> Finding:
    """Our scan.max_size against the limits in the backend's own clamd.conf."""
    ours = cfg[K.MAX_SIZE]
    shown = Size().to_toml(ours).strip('"')
    conf = conf_for(address, confs)
    if conf is None:
        return Finding(
            "warn",
            f"clamd {address}: its clamd.conf is not on this machine; cannot compare limits",
            f"make sure its StreamMaxLength and MaxFileSize are >= scan.max_size ({shown})",
        )
    mode = _mode(cfg, address)
    if mode == "INSTREAM" and conf.size("StreamMaxLength") < ours:
        return Finding(
            "fail",
            f"clamd {address}: StreamMaxLength {conf.get('StreamMaxLength')} < scan.max_size "
            f"{shown} ({conf.path}): messages in between come back unchecked",
            f"set StreamMaxLength {shown} in {conf.path}, or lower scan.max_size",
        )
    if conf.size("MaxFileSize") < ours and conf.get("AlertExceedsMax", "no") != "yes":
        return Finding(
            "warn",
            f"clamd {address}: MaxFileSize {conf.get('MaxFileSize')} < scan.max_size {shown} "
            f"and AlertExceedsMax is off: clamd says OK for what it skips",
            f"set MaxFileSize {shown} (or AlertExceedsMax yes) in {conf.path}",
        )
    return Finding("ok", f"clamd {address}: limits allow scan.max_size {shown}")


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
