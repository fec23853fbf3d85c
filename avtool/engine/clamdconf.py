"""Reading a local clamd's own clamd.conf: its limits and Alert* settings (doctor), its database
dir (doctor, reload).

The file format is clamd.conf(5): ``Option Argument`` per line, ``#`` comments; clamd reads it
top to bottom, so the last line naming an option wins. A file clamd itself would refuse (a line
that is no option name) is a ClamdConfError, as is one that cannot be read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from avtool.config.kinds import Size

DEFAULT_CLAMD_CONF = Path("/etc/clamav/clamd.conf")
PROC = Path("/proc")  # where running clamds are found (a seam for tests)
# clamd.conf(5) of ClamAV 1.4: the defaults of the options we read when a file omits them
CLAMD_DEFAULTS = {
    "StreamMaxLength": "100M",
    "MaxFileSize": "100M",
    "MaxScanSize": "400M",
    "MaxRecursion": "17",
}
DEFAULT_DB_DIR = "/var/lib/clamav"
_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_BOOL = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


class ClamdConfError(Exception):
    """A clamd.conf that cannot be read or parsed; ``str()`` is one line naming the file."""


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

    def flag(self, name: str) -> bool:
        """A BOOL option (clamd.conf(5): yes/no, true/false, 1/0); absent or odd: off."""
        return _BOOL.get(self.values.get(name, "no").lower(), False)

    def number(self, name: str) -> int | None:
        raw = self.get(name)
        return int(raw) if raw.isdigit() else None

    @property
    def db_dir(self) -> Path:
        return Path(self.values.get("DatabaseDirectory", DEFAULT_DB_DIR))


def read_clamd_conf(path: Path) -> ClamdConf:
    """The options of ``path``; ClamdConfError if it cannot be read or is not a clamd.conf."""
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError as e:
        raise ClamdConfError(f"cannot read {path}: {e.strerror or e}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            name, *value = line.split(None, 1)
            if not _OPTION.match(name):
                raise ClamdConfError(f"cannot parse {path}:{number}: not a clamd.conf option line")
            values[name] = value[0].strip() if value else ""
    return ClamdConf(path, values)


def running_clamd_confs() -> list[ClamdConf]:
    """The clamd.conf of every clamd running here (from /proc), else the system one; a file
    that cannot be read or parsed is left out (``find_clamd_confs`` says why)."""
    return find_clamd_confs()[0]


def find_clamd_confs() -> tuple[list[ClamdConf], list[ClamdConfError]]:
    """The clamd.conf of every clamd running here (from /proc), else the system one, and the
    problems with those that cannot be read or parsed."""
    paths: list[Path] = []
    for proc in PROC.glob("[0-9]*"):
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
    confs, problems = [], []
    for path in dict.fromkeys(paths):
        try:
            confs.append(read_clamd_conf(path))
        except ClamdConfError as e:
            problems.append(e)
    return confs, problems


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
    db_dir = conf.db_dir
    for name in ("daily.cld", "daily.cvd"):
        try:
            with open(db_dir / name, "rb") as f:
                head = f.read(512)
        except OSError:
            continue
        if m := _CVD_HEADER.match(head):
            return int(m.group(1))
    return None
