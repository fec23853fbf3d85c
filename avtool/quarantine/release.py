"""``avtool quarantine release``: scan a held message again, and give it back if clean now.

The order protects the mail (issue 17, "Concurrency"):

1. the entry's lock (Store.open_locked: flock on its directory, not blocking) and a check that
   the name still leads to the locked directory: two releases of one id deliver it once;
2. a scan with today's signatures, by the configured clamd, as ``avtool scan`` does (FILDES on
   the held file; the unscannable check for what clamd answers OK without looking). Anything
   but Clean holds it back unless ``--force``, which is logged as a WARNING;
3. delivery: a filter entry goes back through Courier's own sendmail (``notify.sendmail``)
   with its original envelope, so that normal delivery, aliases and Return-Path apply; a
   mailbox entry goes back where it was (quarantine/putback.py, as its owner);
4. only then the entry is removed: renamed out of the ids' namespace first (one rename, no
   space needed), then deleted. A rename that fails leaves a ``released`` mark inside the
   entry, which a later release refuses: delivered twice is never the fallback.

A failure before 3 completes (clamd down, sendmail refused or missing, a full spool disk)
leaves the entry as it was. Courier's sendmail, measured (courier-mta 1.0.16, Debian 12):
``-f ''`` is the null sender (``Return-Path: <>``), ``-f '<>'`` is refused (517, exit 67); any
user may set ``-f``; Courier unable to take it (authdaemond down) exits 75, saying
``450 Service temporarily unavailable.`` on stdout and why on stderr;
recipients after ``--`` are taken as given and the message's To/Cc are not read; a line
holding a lone ``.`` is kept (it runs as with ``-oi``). It does rewrite the header as every
local submission: address fields re-formatted (comments dropped, ``<a@b>`` as ``a@b``),
unqualified addresses qualified with the local host, Message-ID and Date added when missing,
its own Received line on top. Without ``MAILUSER``, ``MAILHOST``, ``MAILNAME`` and ``NAME`` in
its environment it leaves the From address and name alone (sendmail(1), "SENDER ADDRESS"):
it runs with PATH only. The message goes through the filters again only where
``enablefiltering`` names ``local`` (docs/notes/courier.md §3): then a forced release of a
still-infected message meets the filter's policy once more.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from avtool import logs
from avtool.config import Config
from avtool.config import keys as K
from avtool.courier import unscannable
from avtool.engine import Clean, Engine, Failed, Infected, Unchecked, Verdict
from avtool.errors import AvtoolError, UsageError
from avtool.quarantine import putback
from avtool.quarantine.store import GONE_PREFIX, Store, check_id
from avtool.quarantine.store import _read as read_file
from avtool.safedir import MISSING, untrusted
from avtool.scan.mailbox.message import printable

log = logging.getLogger("avtool.quarantine")

# Courier's submit has no timeout of its own while a filter answers (notes §3): ours.
SENDMAIL_TIMEOUT = 300.0
# A file in an entry whose message went out but whose removal failed: never deliver again.
RELEASED_MARK = "released"
_HEAD = 1 << 16
# An envelope address as sendmail takes it on its command line: no space, no control, no <>.
_ADDRESS = re.compile(r"\A[^\s<>\x00-\x1f\x7f]{1,998}\Z")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

Scan = Callable[[int], Verdict]


class HeldBack(AvtoolError):
    """The message is still infected (or still cannot be checked): not released."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class Released:
    """What one release did: ``where`` it went (recipients, or the mailbox path)."""

    ident: str
    where: str
    verdict: str
    forced: bool = False
    leftover: str | None = None  # a removed entry's directory that could not be deleted


@dataclasses.dataclass(frozen=True)
class Releaser:
    """What every release of one command shares: the store, the scan, Courier's sendmail."""

    store: Store
    scan: Scan
    sendmail: str
    to: tuple[str, ...] = ()
    force: bool = False

    @classmethod
    def from_config(
        cls, cfg: Config, store: Store, *, to: Sequence[str] = (), force: bool = False
    ) -> Releaser:
        # transfer "scan" needs a path clamd can open; the store is courier's 0700: by FILDES
        scan_cfg = cfg.override(K.TRANSFER, "auto") if cfg[K.TRANSFER] == "scan" else cfg
        engine = Engine.from_config(scan_cfg)
        return cls(store, lambda fd: rescan(engine, fd), cfg[K.SENDMAIL], _addresses(to), force)

    def release(self, ident: str) -> Released:
        """Release ``ident``; HeldBack (exit 1) or UsageError (exit 2) with one line if not."""
        check_id(ident)
        fd = self.store.open_locked(ident)
        try:
            return self._locked(ident, fd)
        finally:
            os.close(fd)  # lets go of the lock

    def _locked(self, ident: str, fd: int) -> Released:
        info = _verdict_json(ident, fd)
        if _exists(fd, RELEASED_MARK):
            raise UsageError(
                f"{ident}: already delivered by an earlier release that could not remove it: "
                f"delete it (avtool quarantine delete {ident})"
            )
        origin = info.get("origin") or "filter"
        if origin not in ("filter", "mailbox"):
            raise UsageError(f"{ident}: verdict.json: unknown origin {str(origin)!r}")
        if origin == "mailbox" and self.to:
            raise UsageError(f"{ident}: --to applies to mail the filter held, not a mailbox's")
        data = _open_data(ident, fd)
        try:
            verdict = self.scan(data)
            said = printable(self._judge(ident, verdict))
            if origin == "mailbox":
                where = printable(_put_back(self.store, ident, fd, info))
            else:
                sender, rcpts = _envelope(ident, info, self.to)
                reinject(self.sendmail, data, sender, rcpts, ident)
                where = printable(", ".join(f"<{r}>" for r in rcpts))
        finally:
            os.close(data)
        forced = not isinstance(verdict, Clean)
        held_from = printable(str(info.get("sender") or ""))
        text = f"quarantine: released {ident} from=<{held_from}> to={where}"
        text += f" FORCED although {said} (--force)" if forced else f" rescan={said}"
        try:
            leftover = _remove(self.store, ident, fd)
        except UsageError as e:
            logs.audit(log, logging.ERROR, f"{text}; but: {e}")
            raise
        logs.audit(log, logging.WARNING if forced else logging.INFO, text)
        return Released(ident, where, said, forced=forced, leftover=leftover)

    def _judge(self, ident: str, verdict: Verdict) -> str:
        """What the rescan said, in a few words; HeldBack or UsageError unless Clean or forced."""
        if isinstance(verdict, Clean):
            return "clean"
        if isinstance(verdict, Infected):
            said = f"still infected: {' '.join(verdict.names)}"
        elif isinstance(verdict, Unchecked):
            said = f"still unchecked: {verdict.reason}"
        else:
            said = f"rescan failed: {verdict.reason}"
        if self.force:
            return said
        if isinstance(verdict, Failed):
            raise UsageError(f"{ident}: {said}: not released (the entry stays)")
        raise HeldBack(f"{ident}: {said}: not released (--force releases it anyway)")


def rescan(engine: Engine, fd: int) -> Verdict:
    """The held file through clamd, as ``avtool scan`` does a message: Clean only if clamd
    looked (courier/unscannable.py: message/partial and kin are answered OK unseen)."""
    verdict = engine.scan(fd)
    if isinstance(verdict, Clean):
        try:
            size = os.fstat(fd).st_size
            unseen = unscannable.find(fd, size, os.pread(fd, min(size, _HEAD), 0))
        except OSError as e:
            return Failed(f"cannot read the held message: {e.strerror or e}")
        if unseen is not None:
            return Unchecked(unseen, verdict.backend)
    return verdict


def reinject(sendmail: str, data: int, sender: str, recipients: Sequence[str], ident: str) -> None:
    """Submit the message open on ``data`` through Courier's sendmail with this envelope;
    UsageError with sendmail's own words when it does not take it."""
    trusted_program(sendmail, ident)
    os.lseek(data, 0, os.SEEK_SET)
    argv = [sendmail, "-f", sender, "--", *recipients]
    try:
        done = subprocess.run(  # noqa: S603 - a fixed program, the envelope as separate words
            argv,
            stdin=data,
            # its reply ("450 ...") on stdout, its complaints on stderr: one stream, in order
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin"},  # no MAILUSER/MAILHOST/NAME: From stays as it is
            cwd="/",
            timeout=SENDMAIL_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise UsageError(
            f"{ident}: {sendmail}: not found (notify.sendmail; is Courier installed?): "
            "not released (the entry stays)"
        ) from None
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"{ident}: {sendmail} did not finish within {SENDMAIL_TIMEOUT:g} s and was stopped: "
            "not released (the entry stays; see mailq before releasing again)"
        ) from None
    except OSError as e:
        raise UsageError(f"{ident}: {sendmail}: {e.strerror or e}: not released") from None
    if done.returncode != 0:
        said = " / ".join(
            printable(line) for line in done.stdout.decode(errors="replace").splitlines()
        )
        how = f"exit {done.returncode}" if done.returncode > 0 else f"signal {-done.returncode}"
        raise UsageError(
            f"{ident}: Courier refused the message ({how}: {said or 'no message'}): "
            "not released (the entry stays)"
        )


def trusted_program(path: str, ident: str) -> None:
    """UsageError unless ``path`` is a program only root (or we) could have put there
    (``untrusted``): root runs it with the held mail."""
    why = untrusted(path)
    if why == MISSING:
        raise UsageError(
            f"{ident}: {path}: not found (notify.sendmail; is Courier installed?): "
            "not released (the entry stays)"
        )
    if why is not None:
        raise UsageError(f"{ident}: notify.sendmail: {why}: not run, not released")


def _remove(store: Store, ident: str, fd: int) -> str | None:
    """Take the delivered entry out of the store; the name of a leftover directory, if any."""
    gone = GONE_PREFIX + ident
    try:
        os.rename(ident, gone, src_dir_fd=store.fd, dst_dir_fd=store.fd)
    except OSError as e:
        try:
            os.close(os.open(RELEASED_MARK, os.O_WRONLY | os.O_CREAT | _READ, 0o600, dir_fd=fd))
            guard = "a second release of it is refused"
        except OSError:
            guard = "a second release would deliver it again"
        raise UsageError(
            f"{ident}: delivered, but the entry could not be removed ({e.strerror or e}); "
            f"{guard}: delete it (avtool quarantine delete {ident})"
        ) from None
    try:
        shutil.rmtree(gone, dir_fd=store.fd)
    except OSError:
        return os.path.join(store.root, gone)
    return None


def _verdict_json(ident: str, fd: int) -> dict[str, Any]:
    try:
        raw = read_file(fd, "verdict.json")
        info = json.loads(raw)
    except OSError as e:
        raise UsageError(f"{ident}: verdict.json: {_why(e)}: not released") from None
    except ValueError as e:
        raise UsageError(f"{ident}: verdict.json: not JSON ({e}): not released") from None
    if not isinstance(info, dict):
        raise UsageError(f"{ident}: verdict.json: not a JSON object: not released")
    return info


def _envelope(ident: str, info: dict[str, Any], to: tuple[str, ...]) -> tuple[str, list[str]]:
    """(sender, recipients) to re-inject with: the held recipients (``held``: those whose
    delivery the quarantine took; older entries: all of ``recipients``), or ``--to``."""
    sender = info.get("sender")
    sender = "" if sender is None else sender
    if not isinstance(sender, str) or (sender and not _ADDRESS.match(sender)):
        raise UsageError(f"{ident}: verdict.json: sender {sender!r} is not an address")
    if to:
        return sender, list(to)
    rcpts = info.get("held", info.get("recipients"))
    if not isinstance(rcpts, list) or not rcpts:
        raise UsageError(f"{ident}: verdict.json: no recipients: name them with --to")
    for r in rcpts:
        if not isinstance(r, str) or not _ADDRESS.match(r):
            raise UsageError(f"{ident}: verdict.json: recipient {r!r} is not an address")
    return sender, rcpts


def _addresses(to: Sequence[str]) -> tuple[str, ...]:
    """``--to`` values, ``<a@b>`` taken as ``a@b``; UsageError for one that is no address."""
    out = []
    for raw in to:
        address = raw[1:-1] if raw.startswith("<") and raw.endswith(">") else raw
        if not _ADDRESS.match(address):
            raise UsageError(f"--to {printable(raw)!r}: not an address")
        out.append(address)
    return tuple(out)


def _put_back(store: Store, ident: str, fd: int, info: dict[str, Any]) -> str:
    """A mailbox scan's entry goes back to its mailbox, as its owner (quarantine/putback.py)."""
    return str(putback.put_back(store, ident, fd, info))


def _open_data(ident: str, fd: int) -> int:
    try:
        data = os.open("data", _READ, dir_fd=fd)
    except OSError as e:
        raise UsageError(f"{ident}: data: {_why(e)}: not released") from None
    if not stat.S_ISREG(os.fstat(data).st_mode):
        os.close(data)
        raise UsageError(f"{ident}: data: not a regular file: not released")
    return data


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _why(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "missing (a corrupt entry)"
    if e.errno == errno.ELOOP:
        return "a link: refused"
    return e.strerror or str(e)
