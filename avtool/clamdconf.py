"""Reading a local clamd's own clamd.conf: its limits (doctor) and its database dir (reload)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from avtool.kinds import Size

DEFAULT_CLAMD_CONF = Path("/etc/clamav/clamd.conf")
CLAMD_DEFAULTS = {"StreamMaxLength": "100M", "MaxFileSize": "100M", "MaxScanSize": "400M"}
DEFAULT_DB_DIR = "/var/lib/clamav"


@dataclass(frozen=True)
class ClamdConf:
    path: Path
    values: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, CLAMD_DEFAULTS.get(name, default))

    def size(self, name: str) -> int:
        raw = self.get(name, "0")
        try:
            value = Size().parse(raw)
        except ValueError:
            return 0
        return value if value else 1 << 62  # 0 means "no limit" in clamd.conf


def read_clamd_conf(path: Path) -> ClamdConf:
    values: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            values[name] = value.strip()
    return ClamdConf(path, values)


def running_clamd_confs() -> list[ClamdConf]:
    """The clamd.conf of every clamd running here (from /proc), else the system one."""
    paths: list[Path] = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != b"clamd":
            continue
        path = DEFAULT_CLAMD_CONF
        for i, arg in enumerate(argv):
            if arg in (b"-c", b"--config-file") and i + 1 < len(argv):
                path = Path(os.fsdecode(argv[i + 1]))
            elif arg.startswith(b"--config-file="):
                path = Path(os.fsdecode(arg.split(b"=", 1)[1]))
        paths.append(path)
    if not paths:
        paths.append(DEFAULT_CLAMD_CONF)
    confs = []
    for path in dict.fromkeys(paths):
        try:
            confs.append(read_clamd_conf(path))
        except OSError:
            continue
    return confs


def conf_for(address: str, confs: list[ClamdConf]) -> ClamdConf | None:
    for conf in confs:
        if address.startswith("/"):
            sock = conf.values.get("LocalSocket")
            if sock and os.path.realpath(sock) == os.path.realpath(address):
                return conf
        else:
            host, _, port = address.rpartition(":")
            loopback = host.strip("[]") in ("127.0.0.1", "localhost", "::1")
            if loopback and conf.values.get("TCPSocket") == port:
                return conf
    return None


_CVD_HEADER = re.compile(rb"^ClamAV-VDB:[^:]*:(\d+):")


def disk_db_version(conf: ClamdConf) -> int | None:
    """The daily database version on disk (the header of daily.cld/.cvd), as VERSION reports it
    once clamd has loaded it; None when there is no daily database."""
    db_dir = Path(conf.values.get("DatabaseDirectory", DEFAULT_DB_DIR))
    for name in ("daily.cld", "daily.cvd"):
        try:
            with open(db_dir / name, "rb") as f:
                head = f.read(512)
        except OSError:
            continue
        if m := _CVD_HEADER.match(head):
            return int(m.group(1))
    return None
