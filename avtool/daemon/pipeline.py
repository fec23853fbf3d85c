"""One message through the filter: request -> envelope -> scan -> decision -> actions -> reply.

Blocking code, run in a worker thread by the daemon and directly by ``batch-test``: the same
function serves both, only the transport differs. It never raises: every failure is a reply,
and every failure that is not a decision of the admin is a 4xx, so Courier keeps the mail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from avtool import logs
from avtool.config import Config
from avtool.config import keys as K
from avtool.courier import control, message, protocol, spool, unscannable
from avtool.courier.control import Envelope
from avtool.courier.protocol import Reply, Request
from avtool.courier.spool import DataFile
from avtool.daemon import policy
from avtool.engine import Engine, secondlook
from avtool.engine.verdict import Clean, Infected, Unchecked, Verdict
from avtool.errors import AvtoolError
from avtool.quarantine import notices
from avtool.safedir import CREATE_NOFOLLOW

log = logging.getLogger("avtool")


class Prepared:
    """A message ready for its scan: the data file open on ``fd`` (read-only, no symlink) and
    its directory (spool.DataFile), kept open until the message is complete: the scan, the
    header peek, the rewrite and the quarantine copy all use them, never the path again."""

    __slots__ = ("request", "envelope", "data", "fd", "size", "scan_ms")

    def __init__(self, request: Request, envelope: Envelope, data: DataFile) -> None:
        self.request = request
        self.envelope = envelope
        self.data = data
        self.fd = data.fd
        self.size = data.size
        self.scan_ms = 0.0

    def close(self) -> None:
        self.fd = -1
        self.data.close()


@dataclass(frozen=True, slots=True)
class Judged:
    prepared: Prepared
    verdict: Verdict | None  # None: exempt, not scanned
    decision: policy.Decision
    rewrite: bool  # header fields to add or rename

    @property
    def writes(self) -> bool:
        """Completing it writes files (quarantine, drop marks, header fields)."""
        return self.rewrite or self.decision.action in ("quarantine", "drop")


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    decision: policy.Decision | None
    envelope: Envelope | None
    verdict: Verdict | None
    size: int
    scan_ms: float
    held: str | None = None  # quarantined (its quarantine id) or dropped (its message id)


class Pipeline:
    """Handles requests with one Config and Engine; the daemon swaps in a new one on reload."""

    def __init__(self, cfg: Config, engine: Engine, *, name: str = "avtool") -> None:
        self.cfg = cfg
        self.engine = engine
        self.name = name
        self.outbox = notices.Outbox()  # a reload's new pipeline has its own

    def handle(self, request: Request, deadline: float, *, dry_run: bool = False) -> Outcome:
        """The whole message, blocking: prepare, scan, judge, complete, log."""
        dry_run = dry_run or self.cfg[K.DRY_RUN]
        try:
            outcome = self._handle(request, deadline, dry_run)
        except Exception as e:  # noqa: BLE001 - a bug must defer the mail, never accept it
            outcome = self.internal_error(request, e)
        self.log(request, outcome, dry_run)
        return outcome

    def _handle(self, request: Request, deadline: float, dry_run: bool) -> Outcome:
        prepared = self.prepare(request)
        if isinstance(prepared, Outcome):
            return prepared
        if isinstance(prepared, Judged):  # exempt, with forged X-Virus-* fields to rename
            return self.complete(prepared, dry_run)
        try:
            started = time.monotonic()
            verdict = self.engine.scan(prepared.fd, path=request.data_path, deadline=deadline)
            verdict = self.look_again(prepared, verdict, deadline)
            prepared.scan_ms = (time.monotonic() - started) * 1000
            judged = self.judge(prepared, verdict)
        except BaseException:
            prepared.close()
            raise
        return self.complete(judged, dry_run)

    # The steps, for the daemon's event loop (loop.py), which scans in between without
    # blocking, and runs complete() in a worker thread when it writes files (judged.writes).
    def prepare(self, request: Request) -> Outcome | Prepared | Judged:
        """Paths, envelope, exemptions, the open data file: an Outcome when the message needs
        no scan (exempt, or a bad request), a Judged when it needs none but its header needs
        work (exempt with X-Virus-* fields to rename), else the Prepared message. The caller
        closes what is Prepared (complete() closes a Judged's)."""
        try:
            spool.check_paths(request, self.cfg[K.SPOOL_DIR])
            envelope = control.read_envelope(request.control_paths)
        except (protocol.ProtocolError, control.ControlError) as e:
            return Outcome(e.reply, None, None, None, 0, 0.0)

        reason = policy.exemption(envelope, self.cfg)
        if reason is not None and not self.cfg[K.HEADER_RENAME]:
            return Outcome(Reply(200, "Ok"), policy.exempt(reason), envelope, None, 0, 0.0)

        try:
            data = spool.open_spooled(request.data_path, self.cfg[K.SPOOL_DIR])
        except protocol.ProtocolError as e:
            return Outcome(e.reply, None, envelope, None, 0, 0.0)
        prepared = Prepared(request, envelope, data)
        if reason is None:
            return prepared
        # Exempt, but a forged X-Virus-Status: Clean must not reach a recipe that trusts it.
        decision = policy.exempt(reason)
        try:
            quick = message.quick_header(os.pread(data.fd, message.READ_LINE, 0), data.size)
            if message.has_fields_in(data.fd, policy.RENAMED, quick=quick):
                return Judged(prepared, None, decision, True)
        except BaseException:
            prepared.close()
            raise
        prepared.close()
        return Outcome(Reply(200, "Ok"), decision, envelope, None, 0, 0.0)

    def look_again(self, prepared: Prepared, verdict: Verdict, deadline: float) -> Verdict:
        """Every virus name, when the first one would let the message through more gently than
        another could (policy.hides; engine/secondlook.py): blocking, so the daemon's loop
        runs it in a worker."""
        if not isinstance(verdict, Infected) or not policy.hides(verdict, self.cfg):
            return verdict
        data = secondlook.read_all(prepared.fd, prepared.size)
        again = secondlook.every_name(verdict, data, self.engine, deadline=deadline)
        log.info(
            "second look at %s (first name %s): %s",
            prepared.request.data_path,
            verdict.names[0],
            ", ".join(again.names) if isinstance(again, Infected) else again,
        )
        return again

    def judge(self, prepared: Prepared, verdict: Verdict) -> Judged:
        """The decision on a scanned message (its file still open: the header is peeked
        through it), and whether completing it writes files."""
        quick = None
        if isinstance(verdict, Clean):
            head = os.pread(prepared.fd, message.READ_LINE, 0)
            quick = message.quick_header(head, prepared.size)
            unseen = unscannable.find(prepared.fd, prepared.size, head)
            if unseen is not None:  # clamd said OK without looking (courier/unscannable.py)
                verdict = Unchecked(unseen, verdict.backend)
        decision = policy.decide(verdict, prepared.envelope, self.cfg)
        rewrite = False
        kept = decision.action not in ("quarantine", "drop") or bool(decision.keep)
        if decision.code < 400 and kept:  # somebody gets this copy: header work?
            rewrite = bool(decision.headers) or (
                self.cfg[K.HEADER_RENAME]
                and message.has_fields_in(prepared.fd, policy.RENAMED, quick=quick)
            )
        return Judged(prepared, verdict, decision, rewrite)

    def complete(self, judged: Judged, dry_run: bool) -> Outcome:
        """Carry the decision out (quarantine, drop marks, header fields) and say the reply;
        the message's files are closed after, whatever happens."""
        p, verdict, decision = judged.prepared, judged.verdict, judged.decision
        if dry_run:
            p.close()
            return Outcome(Reply(200, "Ok"), decision, p.envelope, verdict, p.size, p.scan_ms)
        try:
            held = self._apply(decision, p, verdict, judged.rewrite)
        except (OSError, AvtoolError) as e:
            log.error("cannot %s %s: %s", decision.action, p.request.data_path, e)
            reply = Reply(432, f"4.3.0 avtool could not {decision.action} the message")
            return Outcome(reply, decision, p.envelope, verdict, p.size, p.scan_ms)
        finally:
            p.close()
        reply = Reply(decision.code, decision.text)
        return Outcome(reply, decision, p.envelope, verdict, p.size, p.scan_ms, held)

    def notify(self, outcome: Outcome) -> None:
        """The notices for a quarantined or dropped message (quarantine/notices.py), called
        once Courier has its reply: they are sent in threads of their own, never waited for
        here, and a failure is a log line; clean mail costs one attribute test."""
        d, envelope = outcome.decision, outcome.envelope
        if outcome.held is None or d is None or envelope is None:
            return
        try:
            kept_from = [r.address for r in d.drop or envelope.recipients]
            notes = notices.for_message(
                self.cfg, d.action, outcome.held, envelope.sender, kept_from, list(d.names)
            )
            self.outbox.post(self.cfg, outcome.held, notes)
        except Exception as e:  # noqa: BLE001 - a notice never changes what Courier was told
            log.error("notice for %s not sent: %s", outcome.held, e)

    def internal_error(self, request: Request, error: Exception) -> Outcome:
        log.error("internal error on %s", request.data_path, exc_info=error)
        reply = Reply(432, f"4.3.0 avtool internal error: {type(error).__name__}")
        return Outcome(reply, None, None, None, 0, 0.0)

    def _apply(
        self, decision: policy.Decision, p: Prepared, verdict: Verdict | None, rewrite: bool
    ) -> str | None:
        """Carry the decision out; the id a notice names when the message is held or dropped."""
        envelope = p.envelope
        held = None
        if decision.action == "quarantine":
            held = self._quarantine(p, verdict, decision)
        elif decision.action == "drop":
            held = envelope.message_id or Path(p.request.data_path).name
        if decision.action in ("quarantine", "drop") and decision.drop:
            verb = "dropped" if decision.action == "drop" else "quarantined"
            note = f"{verb} by {self.name}: {decision.reason}"
            within = (os.path.dirname(p.request.data_path), p.data.dir_fd)
            control.mark_delivered(envelope, decision.drop, note, time.time(), within=within)
        if rewrite:
            rename = list(policy.RENAMED) if self.cfg[K.HEADER_RENAME] else []
            data = p.data
            message.rewrite_headers_in(
                data.fd, data.dir_fd, data.name, list(decision.headers), rename
            )
        return held

    def _quarantine(self, p: Prepared, verdict: Verdict | None, decision: policy.Decision) -> str:
        """Keep data file (from its open descriptor), control files and verdict in a 0700
        dir of 0600 files; the entry's id."""
        request, envelope = p.request, p.envelope
        root = Path(self.cfg[K.QUARANTINE_DIR])
        if not root.is_dir():
            _private_dirs(root)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        ident = (envelope.message_id or Path(request.data_path).name).replace("/", "_")
        target = root / f"{stamp}-{ident}"
        os.mkdir(target, 0o700)
        os.chmod(target, 0o700)  # whatever the umask: 0700 even under umask 0277
        try:
            _copy_fd(p.fd, target / "data")
            for i, path in enumerate(request.control_paths):
                with _closing(spool.open_beside(p.data, request.data_path, path)) as fd:
                    _copy_fd(fd, target / f"control.{i}")
            info = {
                "verdict": type(verdict).__name__ if verdict is not None else None,
                "names": list(decision.names),
                "reason": decision.reason,
                "sender": envelope.sender,
                "recipients": [r.address for r in envelope.recipients],
                "message_id": envelope.message_id,
                "backend": verdict.backend if verdict is not None else None,
                "time": stamp,
            }
            fd = _create_private(target / "verdict.json")
            with os.fdopen(fd, "w") as f:
                json.dump(info, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # no half quarantine: the caller defers
            raise
        return target.name

    def log(self, request: Request, outcome: Outcome, dry_run: bool) -> None:
        """The one line per message."""
        env = outcome.envelope
        d = outcome.decision
        action = d.action if d else ("defer" if outcome.reply.code >= 400 else "accept")
        verdict = d.reason if d else _reply_text(outcome.reply)
        fields = [
            f"id={env.message_id if env and env.message_id else '-'}",
            f"from=<{_printable(env.sender) if env else ''}>",
            f"rcpts={len(env.recipients) if env else 0}",
            f"to={_addresses(env) if env else '-'}",
            f"verdict={verdict}",
            f"action={'would ' if dry_run else ''}{action}",
            f"reply={outcome.reply.code}",
            f"bytes={outcome.size}",
            f"ms={outcome.scan_ms:.1f}",
        ]
        text = " ".join(fields)
        if d and d.fail_open:
            logs.line(log, logging.ERROR, f"FAIL-OPEN accepted unscanned mail: {text}")
        elif outcome.reply.code >= 400 and d is None:
            logs.line(log, logging.WARNING, text)
        else:
            logs.line(log, logging.INFO, text)


LOG_RECIPIENTS = 10  # at most this many addresses in a log line, then "+N"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    """No control characters in a log line: a CR or an ESC in an address cannot fake a line."""
    return _CONTROL.sub("?", text)


def _addresses(envelope: Envelope) -> str:
    shown = [f"<{_printable(r.address)}>" for r in envelope.recipients[:LOG_RECIPIENTS]]
    more = len(envelope.recipients) - len(shown)
    return ",".join(shown) + (f",+{more}" if more > 0 else "")


def _reply_text(reply: Reply) -> str:
    text = reply.text if isinstance(reply.text, str) else " ".join(reply.text)
    return text.replace(" ", "_")[:200]


def _private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask (Path.mkdir with
    parents=True makes the parents 0777 & ~umask: world-writable under umask 0)."""
    missing = [path, *(p for p in path.parents if not p.exists())]
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile (another scan): not ours to change
        os.chmod(directory, 0o700)


def _create_private(path: Path) -> int:
    """A new file, 0600 whatever the umask, never through a symlink."""
    fd = os.open(path, CREATE_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_private(src: str, dst: Path) -> None:
    """Copy a spool file opened as the scan opens it (no symlink, regular files only), so a
    link swapped in since the checks cannot make us copy a file from outside the spool."""
    with _closing(spool.open_data(src)) as fd:
        _copy_fd(fd, dst)


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _copy_fd(src: int, dst: Path) -> None:
    """Copy the file open on ``src`` (the data file: the descriptor the scan used; pread, as
    its offset is clamd's too, message._At) into a new private file: what was scanned,
    whatever the path names by now. ``src`` stays the caller's to close (_closing: a full disk
    once leaked it, one descriptor per message until the filter had none left)."""
    with os.fdopen(_create_private(dst), "wb") as out:
        offset = 0
        while chunk := os.pread(src, 1 << 20, offset):
            out.write(chunk)
            offset += len(chunk)
        out.flush()
        os.fsync(out.fileno())
