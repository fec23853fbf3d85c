"""Notices about held mail (issue 17): the texts, from templates the admin can replace, and the
one way avtool sends mail, Courier's sendmail.

``send`` is the contract every sender uses (the daemon's notices, ``quarantine digest``,
``rescan --notify``): a null envelope sender (``-f ''``: Courier's sendmail logs ``from=<>``;
``-f '<>'`` is refused with "517 Syntax error", exit 67: tried on Debian 12's courier-mta),
the recipients after ``--`` (an address cannot pass for an option), and
``Auto-Submitted: auto-generated`` (RFC 3834), ``Precedence: bulk`` and
``X-Auto-Response-Suppress: All``, so that no vacation program or bounce answers a notice: with
the null sender a failed notice makes no bounce either (courierd drops the double bounce).

Never a notice to the envelope sender: it is forged more often than not, and a notice to it is
backscatter. A notice carries the envelope, the virus names and the id, never message content.

The daemon must not wait for sendmail: a submission goes through Courier's filters, avtool
included, so a filter waiting for it while holding a worker or a scan slot can wait for itself.
``Outbox`` sends after the reply to Courier, in a thread per notice, at most ``MAX_IN_FLIGHT``
at once; past that a notice is one log line, not a queue (the quarantine keeps the message, and
the digest lists it).
"""

from __future__ import annotations

import dataclasses
import datetime
import email.policy
import email.utils
import logging
import os
import re
import signal
import socket
import string
import subprocess
import threading
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from pathlib import Path

from avtool.config import Config
from avtool.config import keys as K
from avtool.errors import AvtoolError

log = logging.getLogger("avtool")

TEMPLATES = ("quarantined", "dropped", "recipient", "digest")
MAX_IN_FLIGHT = 8  # notices the daemon has sendmail work on at once; more are logged, not sent
MAX_OUTPUT = 4096  # of sendmail's output, for the error line
PACKAGE_DIR = Path("/usr/lib/avtool")
# Fields avtool sets itself: a template cannot drop or change them.
OURS = {"to", "date", "message-id", "auto-submitted", "precedence", "x-auto-response-suppress"}
OURS |= {"mime-version", "content-type", "content-transfer-encoding"}
_FIELD = re.compile(r"[A-Za-z0-9-]+:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shipped_for(module: Path) -> Path:
    """Where the templates shipped with the avtool at ``module`` are: the Debian package's
    /usr/share/avtool/notices (debian/rules), a checkout's share/notices (tests, development),
    else share/install.sh's /usr/local/share/avtool/notices."""
    module = module.resolve()
    if module.is_relative_to(PACKAGE_DIR):
        return Path("/usr/share/avtool/notices")
    checkout = module.parents[2] / "share" / "notices"
    if checkout.is_dir():
        return checkout
    return Path("/usr/local/share/avtool/notices")


SHIPPED = shipped_for(Path(__file__))


class NoticeError(AvtoolError):
    """A notice could not be written or handed to sendmail."""

    exit_code = 3


@dataclasses.dataclass(frozen=True)
class Notice:
    """One mail to write: a template, its recipients, the values for its ``$names``."""

    template: str
    to: tuple[str, ...]
    values: Mapping[str, str]


def clean(value: object) -> str:
    """One line of text: a CR or LF in a forged address cannot add a header field."""
    return _CONTROL.sub("?", str(value))


def template(cfg: Config, name: str) -> str:
    """The text of template ``name``: notify.templates' copy if it has one, else the shipped."""
    dirs = [Path(cfg[K.NOTIFY_TEMPLATES])] if cfg[K.NOTIFY_TEMPLATES] else []
    for directory in [*dirs, SHIPPED]:
        try:
            return (directory / f"{name}.txt").read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise NoticeError(f"template {directory / name}.txt: {e}") from None
    raise NoticeError(f"no template {name}.txt in {' or '.join(map(str, [*dirs, SHIPPED]))}")


def compose(cfg: Config, notice: Notice) -> bytes:
    """The mail: the template's fields (a Subject, say) and body with ``$name`` replaced
    (string.Template.safe_substitute: an unknown ``$x`` stays as it is), plain UTF-8 text,
    and the fields avtool always sets."""
    values = {k: v if k == "entries" else clean(v) for k, v in notice.values.items()}
    text = string.Template(template(cfg, notice.template)).safe_substitute(values)
    head, _, body = text.partition("\n\n")
    fields = _fields(head)
    if fields is None:  # no header part: all of it is the body
        fields, body = [("Subject", "[avtool] notice")], text
    msg = EmailMessage(policy=email.policy.default)
    for name, value in fields:
        if name.lower() not in OURS:
            msg[name] = clean(value)
    msg["To"] = ", ".join(notice.to) if notice.template != "recipient" else "undisclosed:;"
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid("avtool", domain=socket.gethostname())
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "bulk"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(body, charset="utf-8")
    return msg.as_bytes()


def _fields(head: str) -> list[tuple[str, str]] | None:
    fields: list[tuple[str, str]] = []
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + " " + line.strip())
        elif _FIELD.match(line):
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
        else:
            return None
    return fields


def send(cfg: Config, to: list[str], text: bytes) -> None:
    """Submit ``text`` to ``to`` through Courier's sendmail (notify.sendmail) with a null
    envelope sender; wait at most notify.timeout. NoticeError with one line when it fails.

    The message reaches sendmail as a file (memfd), and its output goes to one: nothing to
    pump, and no pipe a lingering child of sendmail (submit) could hold open past its exit."""
    to = [clean(a).strip() for a in to]
    if not to or not all(to):
        raise NoticeError("no recipient for the notice")
    argv = [cfg[K.SENDMAIL], "-f", "", "--", *to]
    timeout = cfg[K.NOTIFY_TIMEOUT]
    message = os.memfd_create("avtool-notice", os.MFD_CLOEXEC)
    output = os.memfd_create("avtool-sendmail", os.MFD_CLOEXEC)
    try:
        os.write(message, text)  # a memfd takes it all at once
        os.lseek(message, 0, os.SEEK_SET)
        try:
            proc = subprocess.Popen(  # noqa: S603 - the admin's sendmail, argv only, no shell
                argv, stdin=message, stdout=output, stderr=output, start_new_session=True
            )
        except OSError as e:
            raise NoticeError(f"{argv[0]}: {e.strerror or e}") from None
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # sendmail and what it started
            proc.wait()
            raise NoticeError(f"{argv[0]}: no answer within {timeout:g} s: killed") from None
        if code != 0:
            said = clean(os.pread(output, MAX_OUTPUT, 0).decode(errors="replace").strip())
            raise NoticeError(f"{argv[0]} exited {code}: {said or 'no output'}")
    finally:
        os.close(message)
        os.close(output)


def _others(addresses: Iterable[str], sender: str) -> tuple[str, ...]:
    """``addresses`` without the envelope sender (never a notice to it), empties, repeats."""
    out: dict[str, str] = {}
    for a in addresses:
        if a and a.lower() != sender.lower():
            out.setdefault(a.lower(), a)
    return tuple(out.values())


def for_message(
    cfg: Config,
    action: str,
    ident: str,
    sender: str,
    recipients: list[str],
    names: list[str],
    when: datetime.datetime | None = None,
) -> list[Notice]:
    """The notices for one quarantined or dropped message: one to notify.postmaster, and with
    notify.recipients one to the recipients of a quarantined one; none to the sender.
    ``recipients`` are those the message was kept from."""
    when = when or datetime.datetime.now().astimezone()
    admins: tuple[str, ...] = cfg[K.NOTIFY_POSTMASTER]
    postmaster = _others(admins, sender)
    values = {
        "id": ident,
        "sender": sender,
        "recipients": ", ".join(f"<{r}>" for r in recipients) or "-",
        "names": ", ".join(names) or "-",
        "date": when.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": socket.gethostname(),
        "release": f"avtool quarantine release {ident}",
        "days": str(cfg[K.QUARANTINE_DAYS]),
        "contact": ", ".join(admins) or "your postmaster",
    }
    template = "quarantined" if action == "quarantine" else "dropped"
    out = [Notice(template, postmaster, values)] if postmaster else []
    if action == "quarantine" and cfg[K.NOTIFY_RECIPIENTS]:
        held = _others(recipients, sender)
        if held:
            out.append(Notice("recipient", held, values))
    return out


class Outbox:
    """The daemon's notices: each sent in a thread of its own once Courier has its reply, at
    most ``limit`` at once; a failure or a notice past the limit is one log line."""

    def __init__(self, limit: int = MAX_IN_FLIGHT) -> None:
        self.limit = limit
        self._room = threading.BoundedSemaphore(limit)

    def post(self, cfg: Config, ident: str, notices: list[Notice]) -> None:
        """Never blocks, never raises."""
        if not notices:
            return
        if not self._room.acquire(blocking=False):
            log.error("notice for %s not sent: %d notices in flight already", ident, self.limit)
            return
        try:
            threading.Thread(
                target=self._send, args=(cfg, ident, notices), name="notice", daemon=True
            ).start()
        except RuntimeError as e:  # no thread to be had
            self._room.release()
            log.error("notice for %s not sent: %s", ident, e)

    def _send(self, cfg: Config, ident: str, notices: list[Notice]) -> None:
        try:
            for notice in notices:
                try:
                    send(cfg, list(notice.to), compose(cfg, notice))
                except Exception as e:  # noqa: BLE001 - a notice never takes the filter down
                    log.error("notice %s for %s not sent: %s", notice.template, ident, e)
                else:
                    log.info("notice %s for %s sent to %d address(es)", notice.template, ident,
                             len(notice.to))  # fmt: skip
        finally:
            self._room.release()
