"""``avtool run-get-ides``: an xfilter that runs the one fixed update script with privileges.

maildrop pipes an update announcement through it (``xfilter "avtool run-get-ides"``); the
message goes to the script's stdin, through ``sudo -n`` (no setuid program). The result is a
new message: the original headers with the Subject tagged ``[RC]`` (the last ``subject:`` line
the script printed), the script's stdout as the body. Its stderr goes to syslog (mail), at
critical, one step lower per leading ``#``, down to debug; ``subject:`` lines are not logged.

Nothing in the message, the arguments or the environment can choose another program: the
script's path is ``SCRIPT``, fixed when avtool is installed.

Anyone can send mail to the update mailbox with any envelope sender, so what a mail can make
root do is bounded where root runs: the script takes a lock (one update at a time; a second
ends at once, "subject: SKIPPED busy") and keeps the time of the last run in ``STATE_DIR``
(root's, writable by nobody else), refusing a run within its ``MIN_INTERVAL`` ("subject: SKIPPED
interval"), even when the mailbox user calls sudo directly. This side only adds what it can
check early and politely: ``updates.senders`` (an allowlist of envelope senders, forgeable but
it keeps stray mail out) and ``updates.min_interval`` against the script's stamp, so that most
mails inside the interval do not even start sudo. Every such mail is kept, tagged, and the
xfilter exits 0: an error exit makes maildrop defer, and Courier would deliver it again.

A timeout stops the wait, never the delivery: under sudo the script's processes are root's and
cannot be killed from here (killpg gets EPERM), so the script bounds its own run (``timeout``
in get_ides.sh, RUN_TIMEOUT) and this side returns the message tagged ``[TIMEOUT]``, exit 0.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import select
import signal
import subprocess
import syslog
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Where the fixed script is, by how avtool was installed (the sudoers rule names the same
# path): the Debian package's private /usr/lib/avtool/python, else share/install-updates.sh's.
PACKAGE_DIR = Path("/usr/lib/avtool")


def script_for(module: Path) -> Path:
    """The script that goes with the avtool installed at ``module`` (this file's path)."""
    if module.resolve().is_relative_to(PACKAGE_DIR):
        return PACKAGE_DIR / "get_ides.sh"
    return Path("/usr/local/lib/avtool/get_ides.sh")


SCRIPT = script_for(Path(__file__))
# get_ides.sh's STATE_DIR default: its lock (0600) and the time of its last run (``last``,
# seconds since the epoch, 0644). Not /var/lib/avtool: that one is courier's.
STATE_DIR = Path("/var/lib/avtool-get-ides")
MAX_MESSAGE = 8 << 20  # read at most this much of the announcement
MAX_OUTPUT = 1 << 20  # keep at most this much of the script's stdout (and of its stderr)
SEVERITIES = [
    syslog.LOG_CRIT,
    syslog.LOG_ERR,
    syslog.LOG_WARNING,
    syslog.LOG_NOTICE,
    syslog.LOG_INFO,
    syslog.LOG_DEBUG,
]
_SUBJECT = re.compile(rb"^subject:[ \t]*(.*)$", re.I)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Outcome:
    tag: str  # what goes between the brackets of the Subject
    stdout: bytes
    stderr_lines: list[bytes]
    returncode: int | None  # None: did not start or timed out


def skipped(
    sender: str | None,
    *,
    senders: tuple[str, ...],
    min_interval: float,
    now: float | None = None,
) -> Outcome | None:
    """The outcome of a mail that must not start an update, or None to run the script.

    ``sender``: the envelope sender (maildrop's FROM); None when unknown. A sender outside a
    non-empty ``senders`` allowlist is skipped, and so is any mail within ``min_interval`` of
    the script's last run (its stamp in STATE_DIR; root's own check stays the real bound)."""
    if senders and not (
        sender and any(fnmatch.fnmatchcase(sender.casefold(), g.casefold()) for g in senders)
    ):
        who = clean_tag(sender or "") if sender else "unknown"
        note = f"skipped: the envelope sender {who} is not in updates.senders\n"
        return Outcome("SKIPPED sender", note.encode(), [], None)
    last = last_run()
    now = time.time() if now is None else now
    if last is not None and 0 <= now - last < min_interval:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last))
        note = (
            f"skipped: last update at {stamp}, {now - last:.0f} s ago; "
            f"updates.min_interval is {min_interval:g} s\n"
        )
        return Outcome("SKIPPED interval", note.encode(), [], None)
    return None


def last_run(state_dir: Path | None = None) -> int | None:
    """When the script last started a run (its stamp), or None when unknown."""
    path = (state_dir or STATE_DIR) / "last"
    with contextlib.suppress(OSError, ValueError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            text = f.read(32).strip()
        return int(text) if text.isdigit() else None
    return None


def severity(line: bytes) -> tuple[int, bytes]:
    """Leading ``#``s lower the severity from critical, one step each, down to debug."""
    stripped = line.lstrip(b"#")
    level = min(len(line) - len(stripped), len(SEVERITIES) - 1)
    return SEVERITIES[level], stripped.strip()


def clean_tag(text: str) -> str:
    """A tag that cannot break the header: no control characters (CR/LF included), short."""
    return _UNSAFE.sub(" ", text).strip()[:60] or "?"


def subject_tag(stdout: bytes, stderr_lines: list[bytes]) -> str | None:
    """The last ``subject:`` line of stdout, else of stderr."""
    for lines in (stdout.splitlines(), stderr_lines):
        found = [m.group(1) for line in lines if (m := _SUBJECT.match(line.rstrip(b"\r")))]
        if found:
            return clean_tag(found[-1].decode(errors="replace"))
    return None


def command(args: list[str], run_as: tuple[int, int] | None) -> list[str]:
    """sudo -n with a fixed program; as root no sudo is needed (unless -D asks for a user)."""
    if run_as is None and os.geteuid() == 0:
        return [str(SCRIPT), *args]
    sudo = ["sudo", "-n"]
    if run_as is not None:
        sudo += ["-u", f"#{run_as[0]}", "-g", f"#{run_as[1]}"]
    return [*sudo, "--", str(SCRIPT), *args]


def run(
    message: bytes, args: list[str], *, run_as: tuple[int, int] | None, timeout: float
) -> Outcome:
    cmd = command(args, run_as)
    try:
        proc = subprocess.Popen(  # noqa: S603 - the fixed SCRIPT, argv only, no shell
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills all of it
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"},
        )
    except OSError as e:
        return Outcome(f"FAILED: cannot run {cmd[0]}: {e.strerror}", b"", [], None)
    out, err, timed_out = _communicate(proc, message, timeout)
    lines = err.splitlines()
    tag = subject_tag(out, lines)
    if timed_out:
        tag = "TIMEOUT"
        out += (
            f"\nno answer from the update script within {timeout:g} s: stopped waiting. Run "
            "through sudo, it goes on as root until its own RUN_TIMEOUT (get_ides.sh).\n"
        ).encode()
    elif tag is None:
        tag = "OK" if proc.returncode == 0 else f"FAILED: exit {proc.returncode}"
    body = b"\n".join(x for x in out.splitlines() if not _SUBJECT.match(x.rstrip(b"\r")))
    return Outcome(
        tag, body + b"\n" if body else b"", lines, None if timed_out else proc.returncode
    )


def _communicate(
    proc: subprocess.Popen[bytes], message: bytes, timeout: float
) -> tuple[bytes, bytes, bool]:
    """Feed stdin, read both outputs (each bounded: the rest is read and dropped), kill the
    process group at the deadline. Returns (stdout, stderr, timed out)."""
    assert proc.stdin and proc.stdout and proc.stderr  # noqa: S101 - all three are pipes
    until = time.monotonic() + timeout
    pending = memoryview(message)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    reading = {out_fd, err_fd}
    writers = [proc.stdin.fileno()] if pending else []
    if not pending:
        proc.stdin.close()
    while reading or writers:
        left = until - time.monotonic()
        if left <= 0:
            _stop(proc)
            return bytes(bufs[out_fd]), bytes(bufs[err_fd]), True
        readable, writable, _ = select.select(list(reading), writers, [], left)
        for fd in writable:
            try:
                sent = os.write(fd, pending[:65536])
            except BrokenPipeError:
                sent = len(pending)  # the script stopped reading: fine
            pending = pending[sent:]
            if not pending:
                writers.clear()
                proc.stdin.close()
        for fd in readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                reading.discard(fd)
            elif len(bufs[fd]) < MAX_OUTPUT:
                bufs[fd] += chunk[: MAX_OUTPUT - len(bufs[fd])]
    try:
        proc.wait(max(0.1, until - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop(proc)
        return bytes(bufs[out_fd]), bytes(bufs[err_fd]), True
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the script's process group if we may, and stop waiting either way.

    Through sudo the group is root's: killpg fails with EPERM, and waiting would block until
    the script ends. The script bounds itself (RUN_TIMEOUT); we only close our pipe ends."""
    with contextlib.suppress(PermissionError, ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1.0)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def log_stderr(lines: list[bytes], emit: Callable[[int, str], None] | None = None) -> None:
    emit = emit or _syslog
    for line in lines:
        if _SUBJECT.match(line.strip()) or not line.strip():
            continue
        level, text = severity(line)
        emit(level, text.decode(errors="replace"))


def _syslog(level: int, text: str) -> None:
    syslog.openlog("avtool-run-get-ides", 0, syslog.LOG_MAIL)
    syslog.syslog(level, text)


_MIME_FIELDS = (b"content-type", b"content-transfer-encoding", b"mime-version")


def tagged_message(original: bytes, outcome: Outcome) -> bytes:
    """The original header with the Subject tagged, and our text/plain body (the original's
    MIME fields described its own body, so they go)."""
    head = original.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
    fields: list[list[bytes]] = []  # each field as its lines (folded lines stay with it)
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif line:
            fields.append([line])
    lines: list[bytes] = []
    subject: bytes | None = None
    for field in fields:
        name, _, value = field[0].partition(b":")
        name = name.strip().lower()
        if name in _MIME_FIELDS or (name == b"subject" and subject is not None):
            continue
        if name == b"subject":
            subject = b" ".join(part.strip() for part in [value, *field[1:]]).strip()
            lines.append(b"\0subject")  # its place, filled below
            continue
        lines += field
    tagged = b"Subject: " + f"[{clean_tag(outcome.tag)}]".encode()
    tagged += b" " + subject if subject else b""
    if b"\0subject" in lines:
        lines[lines.index(b"\0subject")] = tagged
    else:
        lines.append(tagged)
    lines += [b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=utf-8"]
    lines.append(b"Content-Transfer-Encoding: 8bit")
    return b"\n".join(lines) + b"\n\n" + outcome.stdout
