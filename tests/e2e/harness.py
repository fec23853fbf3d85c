"""Helpers for tests against a real Courier started by tests/e2e/courier.sh.

What they know comes from docs/notes/courier.md: filter sockets live in allfilters/ (section 3,
pitfall 2), ``filterctl`` is asynchronous and can lose its HUP (pitfall 3), every diagnostic
goes to syslog (pitfall 9, courier.sh's sink writes it to ``SYSLOG``), and a filter runs as
user courier with ``/usr/bin/python3`` and an empty environment (pitfall 5).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCRIPT = HERE / "courier.sh"
HOST = os.environ.get("AVTOOL_E2E_ADDRESS", "127.0.0.1")
PORT = int(os.environ.get("AVTOOL_E2E_PORT", "2525"))
SYSLOG = Path(os.environ.get("AVTOOL_E2E_LOG", "/var/log/avtool-e2e/syslog.log"))
PASSWORD = os.environ.get("AVTOOL_E2E_PASSWORD", "avtest-password")
DOMAIN = "example.test"
USER = "avtest"
ADDRESS = f"{USER}@{DOMAIN}"

FILTER_BIN = Path("/usr/lib/courier/filters")
ACTIVE = Path("/etc/courier/filters/active")
SOCKET_DIRS = (Path("/var/lib/courier/allfilters"), Path("/var/lib/courier/filters"))
QUEUE_DIRS = (Path("/var/lib/courier/msgq"), Path("/var/lib/courier/msgs"))
# Where filters find a copy of the avtool package: the repository may not be readable by
# user courier (a home directory of mode 0700), this is.
FILTER_LIB = Path("/var/lib/avtool-e2e/lib")

_QUEUE_ID = re.compile(r"\b([0-9A-F]{16}\.[0-9A-F]{8})\b")


# --- the Courier installation -------------------------------------------------------------


def unavailable() -> str | None:
    """Why the e2e tests cannot run here, or None. courier.sh installs Courier when missing,
    so apt-get is enough; root is needed for that and for /usr/lib/courier/filters."""
    if os.environ.get("AVTOOL_E2E", "1") == "0":
        return "AVTOOL_E2E=0"
    if not Path("/proc/self/stat").exists():
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (Courier's filter dirs and daemons)"
    if not Path("/usr/sbin/courier").exists() and shutil.which("apt-get") is None:
        return "Courier is not installed and apt-get is missing"
    if not Path("/usr/bin/python3").exists() and shutil.which("apt-get") is None:
        return "/usr/bin/python3 is missing (filters run under it as user courier)"
    return None


LOCK = Path(os.environ.get("AVTOOL_E2E_LOCK", "/run/lock/avtool-e2e-courier.lock"))


@contextlib.contextmanager
def exclusive(wait: float = 3600) -> Iterator[None]:
    """Hold the machine-wide lock on the one Courier installation for a whole test session or
    benchmark, so that two of them never reset each other's queue or filters. Re-entrant
    within a process (the e2e conftest and a benchmark that imports it may both take it)."""
    global _held
    if _held:
        yield
        return
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{LOCK}: another Courier test run holds it") from None
                time.sleep(0.5)
        _held = True
        try:
            yield
        finally:
            _held = False
    finally:
        os.close(fd)


_held = False


def courier(step: str, timeout: float = 900) -> str:
    """Run ``courier.sh STEP`` (up, down, reset, status); its stderr, or RuntimeError."""
    done = subprocess.run(
        ["bash", str(SCRIPT), step], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"courier.sh {step} failed ({done.returncode}):\n{done.stderr}")
    return done.stderr + done.stdout


def maildir(user: str = USER) -> Path:
    return Path(pwd.getpwnam(user).pw_dir) / "Maildir"


def queue_files() -> list[Path]:
    return [p for d in QUEUE_DIRS for p in d.rglob("*") if p.is_file()]


# --- SMTP ---------------------------------------------------------------------------------


def make_message(
    subject: str = "e2e",
    body: str = "Hello.\n",
    *,
    sender: str = ADDRESS,
    to: Sequence[str] = (ADDRESS,),
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    lines = [f"From: <{sender}>", f"To: {', '.join(f'<{a}>' for a in to)}", f"Subject: {subject}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\n".join(lines) + "\n\n" + body).encode()


def send(
    message: bytes,
    *,
    sender: str = ADDRESS,
    recipients: Sequence[str] = (ADDRESS,),
    auth: tuple[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """One SMTP transaction; the (code, text) of the last reply: the one after DATA, or the
    first 4xx/5xx at MAIL, RCPT or DATA (the transaction is then abandoned)."""
    with smtplib.SMTP(HOST, PORT, timeout=timeout) as smtp:
        smtp.ehlo("client.example.test")
        if auth is not None:
            smtp.login(*auth)
        code, text = smtp.mail(sender)
        if code >= 400:
            return code, text.decode(errors="replace")
        for rcpt in recipients:
            code, text = smtp.rcpt(rcpt)
            if code >= 400:
                smtp.rset()
                return code, text.decode(errors="replace")
        try:
            code, text = smtp.data(message)
        except smtplib.SMTPDataError as e:  # refused the DATA command itself
            error = e.smtp_error
            return e.smtp_code, error.decode(errors="replace") if isinstance(
                error, bytes
            ) else error
        return code, text.decode(errors="replace")


def queue_id(reply_text: str) -> str:
    """The id in ``250 Ok. 000000006B06830F.00004456``: the end of courierd's ``id=``."""
    m = _QUEUE_ID.search(reply_text)
    if not m:
        raise AssertionError(f"no queue id in {reply_text!r}")
    return m[1]


# --- waiting ------------------------------------------------------------------------------


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds (monotonic) have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def mail_files(user: str = USER) -> list[Path]:
    box = maildir(user)
    return sorted(p for sub in ("new", "cur") for p in (box / sub).iterdir() if p.is_file())


def wait_for_mail(count: int, timeout: float = 15.0, user: str = USER) -> list[Path]:
    """At least ``count`` messages in the Maildir within ``timeout``, else AssertionError."""
    if not wait_for(lambda: len(mail_files(user)) >= count, timeout):
        raise AssertionError(
            f"{len(mail_files(user))} of {count} message(s) after {timeout} s; log:\n" + log_tail()
        )
    return mail_files(user)


def log_mark() -> int:
    """The current end of the syslog file: pass it as ``since`` to see only what follows."""
    try:
        return SYSLOG.stat().st_size
    except FileNotFoundError:
        return 0


def read_log(since: int = 0) -> str:
    try:
        with SYSLOG.open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def log_tail(lines: int = 40) -> str:
    return "\n".join(read_log().splitlines()[-lines:])


def wait_for_log(pattern: str, since: int = 0, timeout: float = 15.0) -> re.Match[str]:
    """The first match of ``pattern`` (a regex) in the syslog after ``since``."""
    found: list[re.Match[str]] = []

    def check() -> bool:
        m = re.search(pattern, read_log(since))
        if m:
            found.append(m)
        return m is not None

    if not wait_for(check, timeout):
        raise AssertionError(f"no {pattern!r} in the log after {timeout} s:\n{log_tail()}")
    return found[0]


def wait_completed(qid: str, since: int = 0, timeout: float = 15.0) -> str:
    """Wait until courierd logged ``completed`` for the message; the log from ``since``."""
    wait_for_log(rf"courierd: completed,id=\S*{re.escape(qid)}\b", since, timeout)
    return read_log(since)


# --- filters ------------------------------------------------------------------------------


def filter_lib() -> Path:
    """A world-readable copy of the avtool package for filters, returned as a sys.path entry.

    Filters run as user courier; the repository may sit where courier cannot read."""
    target = FILTER_LIB / "avtool"
    FILTER_LIB.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(REPO / "avtool", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [FILTER_LIB.parent, FILTER_LIB, *FILTER_LIB.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        elif path.is_file():
            path.chmod(0o644)
    return FILTER_LIB


def install_filter(name: str, source: str) -> Path:
    """Put an executable filter into /usr/lib/courier/filters (not yet active)."""
    path = FILTER_BIN / name
    path.write_text(source)
    path.chmod(0o755)
    return path


def _sockets(name: str) -> list[Path]:
    return [d / name for d in SOCKET_DIRS if (d / name).exists()]


def filterctl(action: str, name: str, timeout: float = 5.0) -> None:
    """``filterctl start|stop NAME`` and wait until the socket is there (start) or gone (stop).

    filterctl only links or unlinks and sends courierfilter a HUP; a HUP that arrives while
    courierfilter waits for a stopping filter is lost (pitfall 3), and without a socket mail
    passes unfiltered. So wait, and if the socket does not follow, ``courierfilter restart``
    (another HUP) and wait again."""
    if action not in ("start", "stop"):
        raise ValueError(action)
    linked = (ACTIVE / name).is_symlink()
    if not (action == "start" and linked):  # ln -s fails on an existing link
        subprocess.run(["/usr/sbin/filterctl", action, name], check=True, capture_output=True)

    def settled() -> bool:
        return bool(_sockets(name)) == (action == "start")

    if wait_for(settled, timeout):
        return
    subprocess.run(["/usr/sbin/courierfilter", "restart"], check=True, capture_output=True)
    if not wait_for(settled, timeout):
        raise RuntimeError(f"filterctl {action} {name}: socket state did not follow\n{log_tail()}")


def remove_filter(name: str) -> None:
    """Stop the filter if active and delete it from /usr/lib/courier/filters."""
    if (ACTIVE / name).is_symlink() or _sockets(name):
        filterctl("stop", name)
    (FILTER_BIN / name).unlink(missing_ok=True)
