"""A clamd on Debian's own generated clamd.conf, not the harness's config written for the tests.

Debian's clamav-daemon postinst writes /etc/clamav/clamd.conf from debconf and ucf keeps that
generated text in its cache (``/var/lib/ucf/cache/:etc:clamav:clamd.conf``): the file as a new
install has it, before share/install.sh or anyone edited /etc. Only what must differ for a
clamd started by a test is changed: its socket, database dir and log live in a temp dir, and it
stays in the foreground as our child. Every other line (limits, Alert*, MaxRecursion 16, ...)
is Debian's. ``conf`` is written once: a test may edit it (share/clamd-config.sh) and start
the server again on the edited file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.clamd_harness import ClamdServer

UCF_CACHE = Path("/var/lib/ucf/cache/:etc:clamav:clamd.conf")
SYSTEM = Path("/etc/clamav/clamd.conf")


def debian_conf_text() -> str | None:
    """Debian's generated clamd.conf without anybody's Alert* lines (the postinst carries
    Alert* lines of /etc's file into the file it generates: measured with dpkg-reconfigure),
    or None when this is no Debian clamav-daemon install."""
    for path in (UCF_CACHE, SYSTEM):  # without ucf's copy, /etc's file
        if path.is_file():
            keep = [x for x in path.read_text().splitlines() if not x.startswith("Alert")]
            return "\n".join(keep) + "\n"
    return None


@dataclass
class DebianClamd(ClamdServer):
    def write_conf(self) -> None:
        if self.conf.exists():
            return
        text = debian_conf_text()
        if text is None:
            raise RuntimeError("no Debian clamd.conf here (clamav-daemon not installed)")
        ours = {
            "LocalSocket": str(self.unix_socket),
            "DatabaseDirectory": str(self.db_dir),
            "LogFile": str(self.log),
            "Foreground": "true",
        }
        lines = []
        for line in text.splitlines():
            name = line.split(None, 1)[0] if line.strip() else ""
            if name in ours:
                lines.append(f"{name} {ours.pop(name)}")
            elif name not in ("TCPSocket", "TCPAddr"):
                lines.append(line)
        lines += [f"{name} {value}" for name, value in ours.items()]
        self.conf.write_text("\n".join(lines) + "\n")
