"""Doctor checks about Courier: filter installed and enabled, socket in place, user courier can
reach clamd, Courier filters the mail sources that matter (docs/notes/courier.md §1-3), and
its sendmail is there for notices and releases."""

from __future__ import annotations

import os
import pwd
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from avtool.config import Config
from avtool.config import keys as K
from avtool.doctor.finding import Finding
from avtool.safedir import MISSING, untrusted

FILTERS = Path("/usr/lib/courier/filters")
ACTIVE = Path("/etc/courier/filters/active")
ENABLEFILTERING = Path("/etc/courier/enablefiltering")
COURIER_USER = "courier"
_INSTALL = "to filter Courier's mail, run share/install.sh"


def check_courier(cfg: Config, name: str = "avtool") -> Iterator[Finding]:
    if not Path("/etc/courier").is_dir():
        yield Finding("warn", "Courier is not installed here; skipping the Courier checks")
        return
    wrapper = FILTERS / name
    if not os.access(wrapper, os.X_OK):
        # Not a filter installation (avtool used for `scan` alone, or not installed yet).
        yield Finding("warn", f"no filter {wrapper}: skipping the Courier checks", _INSTALL)
        return
    yield Finding("ok", f"filter {wrapper} is installed")
    link = ACTIVE / name
    if link.is_symlink() or link.exists():
        yield Finding("ok", f"filter {name} is enabled ({link})")
        yield _socket(Path(cfg[K.COURIER_DIR]) / cfg[K.FILTER_DIR] / name)
    else:
        # Courier does not call a filter that is not enabled, socket or not: one line says so.
        yield Finding(
            "fail",
            f"filter {name} is not enabled: Courier accepts mail without scanning it",
            f"filterctl start {name}",
        )
    yield from _enablefiltering()
    yield from _courier_reaches_clamd(cfg)
    yield _sendmail(cfg)


def _sendmail(cfg: Config) -> Finding:
    """notify.sendmail: notices, the digest and ``quarantine release`` submit mail through it,
    as root too, which runs it only where no other user could have replaced it."""
    path = cfg[K.SENDMAIL]
    why = untrusted(path)
    if why == MISSING or (why is None and not os.access(path, os.X_OK)):
        return Finding(
            "warn",
            f"notify.sendmail {path} is {'missing' if why else 'not executable'}: notices, the "
            "digest and `quarantine release` cannot send mail",
            "set notify.sendmail to Courier's sendmail (courier-mta: /usr/sbin/sendmail)",
        )
    if why is not None:
        return Finding(
            "warn",
            f"notify.sendmail: {why}: root will not run it (notices, digest, release)",
            f"chown root {path}; chmod go-w {path} and its directories",
        )
    return Finding("ok", f"notify.sendmail {path} is a program only root can replace")


def _socket(sock: Path) -> Finding:
    """The socket of an enabled filter: in place and answering?"""
    restart = "courierfilter stop; courierfilter start"
    if not _is_socket(sock):
        return Finding(
            "fail",
            f"no filter socket {sock}: mail is accepted UNFILTERED while the filter is enabled",
            restart,
        )
    if (problem := _no_listener(sock)) is not None:
        return Finding(
            "fail",
            f"filter socket {sock} is dead ({problem}): Courier answers 432 to every message",
            f"{restart} (filterctl stop + start would leave a moment with no socket)",
        )
    return Finding("ok", f"filter socket {sock} is in place and answers")


def _no_listener(path: Path) -> str | None:
    """Why nobody accepts on the socket, or None. Connects and closes without a request: the
    daemon logs that at debug level only."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
        except OSError as e:
            return e.strerror or type(e).__name__
    return None


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _enablefiltering() -> Iterator[Finding]:
    try:
        first = ENABLEFILTERING.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        first = []
    # Only the first line counts (submit.C reads it with config_read1l).
    if "esmtp" in first:
        extra = "" if "local" in first else "; local submissions (sendmail) are not scanned"
        yield Finding("ok", f"{ENABLEFILTERING} filters esmtp{extra}")
    else:
        yield Finding(
            "fail",
            f"{ENABLEFILTERING} does not name esmtp: SMTP mail skips every filter",
            f"echo 'esmtp' > {ENABLEFILTERING} (or 'esmtp local', on one line)",
        )


def _courier_reaches_clamd(cfg: Config) -> Iterator[Finding]:
    """Connect to each unix clamd socket as user courier (a forked child that drops to it)."""
    try:
        courier = pwd.getpwnam(COURIER_USER)
    except KeyError:
        yield Finding("warn", "no user courier: cannot check that it reaches clamd")
        return
    if os.geteuid() != 0:
        yield Finding("warn", "not root: cannot check that user courier reaches clamd")
        return
    for address in cfg[K.BACKENDS]:
        if not address.startswith("/"):
            continue  # TCP: reachable by any user
        error = _connect_as(courier.pw_uid, courier.pw_gid, address)
        if error is None:
            yield Finding("ok", f"user courier can connect to clamd {address}")
        else:
            yield Finding(
                "fail",
                f"user courier cannot connect to clamd {address}: {error}",
                "set LocalSocketMode 666 (or LocalSocketGroup courier) in clamd.conf, "
                "and let courier traverse the socket's directory",
            )


def _connect_as(uid: int, gid: int, path: str) -> str | None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to courier, try, report one line, exit
        os.close(r)
        message = b""
        try:
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
        except OSError as e:
            message = (e.strerror or str(e)).encode()
        os.write(w, message)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read(400)
    os.waitpid(pid, 0)
    return answer.decode(errors="replace") or None
