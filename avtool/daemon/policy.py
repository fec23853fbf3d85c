"""Verdict + envelope -> what to do with the message. Pure: no I/O, so it is tested with tables.

Severity, most severe first, decides between several virus names (as avfilter 3.x: the most
severe wins): quarantine > drop > reject > defer > pass. Quarantine outranks drop because it
also keeps a copy; defer outranks pass because it still keeps the mail from the recipient.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from avtool import __version__
from avtool.config import Config
from avtool.config import keys as K
from avtool.config.kinds import Key
from avtool.courier.control import Envelope, Recipient
from avtool.engine.verdict import Clean, Failed, Infected, Unchecked, Verdict

Action = Literal["accept", "pass", "reject", "drop", "quarantine", "defer"]
SEVERITY: tuple[Action, ...] = ("quarantine", "drop", "reject", "defer", "pass")
STATUS_FIELD = "X-Virus-Status"
SCANNED_FIELD = "X-Virus-Scanned"
# Incoming fields renamed to Old-<name> (headers.rename_incoming), on every path, exempt mail
# included: the README promises every X-Virus-* field, so that a maildrop recipe can trust
# any X-Virus-* field it sees as ours (a sender forges X-Virus-Status: Clean, or a field of
# another scanner's that a recipe also reads, such as X-Virus-Flag).
RENAMED = ("X-Virus-*",)
PATTERN_KEYS: dict[str, Key[tuple[str, ...]]] = {
    "pass": K.PATTERNS_PASS,
    "reject": K.PATTERNS_REJECT,
    "drop": K.PATTERNS_DROP,
    "quarantine": K.PATTERNS_QUARANTINE,
    "defer": K.PATTERNS_DEFER,
}


@dataclass(frozen=True)
class Decision:
    """What to do. ``code``/``text`` is the reply to Courier; ``headers`` are fields to add;
    ``drop`` are the recipients to mark delivered (drop, quarantine); ``keep`` those who still
    get the message (pass-recipients)."""

    action: Action
    code: int
    text: str
    reason: str  # for the log: "clean", "infected: X", "not scanned: authenticated sender"
    headers: tuple[tuple[str, str], ...] = ()
    drop: tuple[Recipient, ...] = ()
    keep: tuple[Recipient, ...] = ()
    fail_open: bool = False
    names: tuple[str, ...] = field(default=())


def exemption(envelope: Envelope, cfg: Config) -> str | None:
    """Why this message is not scanned at all, or None to scan it."""
    if cfg[K.SKIP_AUTHENTICATED] and envelope.auth_user:
        return f"authenticated sender {envelope.auth_user}"
    if cfg[K.SKIP_RELAY_CLIENTS] and envelope.relay_client:
        return f"relay client {envelope.remote_ip or ''}".rstrip()
    return None


def exempt(reason: str) -> Decision:
    return Decision("accept", 200, "Ok", f"not scanned: {reason}")


def decide(verdict: Verdict, envelope: Envelope, cfg: Config) -> Decision:
    if isinstance(verdict, Clean):
        headers: tuple[tuple[str, str], ...] = ()
        if cfg[K.HEADER_CLEAN]:
            headers = (
                (SCANNED_FIELD, f"avtool {__version__} with ClamAV"),
                (STATUS_FIELD, "Clean"),
            )
        return Decision("accept", 200, "Ok", "clean", headers)
    if isinstance(verdict, Failed):
        if cfg[K.FAILED] == "pass":
            return Decision(
                "pass",
                200,
                "Ok",
                f"scan failed: {verdict.reason} (fail-open)",
                ((STATUS_FIELD, _field(f"Unchecked (scan failed: {verdict.reason})")),),
                fail_open=True,
            )
        return Decision(
            "defer",
            432,
            "4.7.1 Virus scanner unavailable, try again later",
            f"scan failed: {verdict.reason}",
        )
    if isinstance(verdict, Unchecked):
        return _act(
            _action(cfg[K.UNCHECKED]),
            envelope,
            cfg,
            reason=f"unchecked: {verdict.reason}",
            status=f"Unchecked ({verdict.reason})",
            reject_text=f"5.7.1 Message could not be scanned: {verdict.reason}",
        )
    action = action_for(verdict.names, cfg)
    shown = ", ".join(_short(n) for n in verdict.names)
    return _act(
        action,
        envelope,
        cfg,
        reason=f"infected: {shown}",
        status=f"Infected ({shown})",
        reject_text="5.7.1 " + cfg[K.REJECT_TEXT].replace("{virus}", shown),
        names=verdict.names,
    )


def action_for(names: Sequence[str], cfg: Config) -> Action:
    """The most severe action over every name; a name takes its most severe matching pattern,
    else the default of its class (PUA, heuristics, infected)."""
    chosen = [_action(_action_for_name(name, cfg)) for name in names]
    return min(chosen or [_action(cfg[K.INFECTED])], key=SEVERITY.index)


def hides(verdict: Verdict, cfg: Config) -> bool:
    """True when a name clamd did not report could make the decision more severe: the names
    found lead to a weaker action than the strongest any name could get (policy.infected, a
    pattern list in use, PUA or heuristics). FILDES and INSTREAM report the first match only,
    so such a message gets a second look for every name (avtool/engine/secondlook.py)."""
    if not isinstance(verdict, Infected):
        return False
    return SEVERITY.index(action_for(verdict.names, cfg)) > SEVERITY.index(strongest(cfg))


def strongest(cfg: Config) -> Action:
    """The most severe action any virus name can get under this configuration."""
    words = [cfg[K.INFECTED], cfg[K.PUA], cfg[K.HEURISTICS]]
    words += [action for action, key in PATTERN_KEYS.items() if cfg[key]]
    return min((_action(w) for w in words if w != "infected"), key=SEVERITY.index)


def _action(word: str) -> Action:
    """A configured action word as an Action (keys.py allows only these words)."""
    for action in SEVERITY:
        if word == action:
            return action
    raise ValueError(f"not an action: {word!r}")


def _action_for_name(name: str, cfg: Config) -> str:
    bare = name.removesuffix(".UNOFFICIAL")
    for action in SEVERITY:
        if any(
            fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(bare, p)
            for p in cfg[PATTERN_KEYS[action]]
        ):
            return action
    infected = cfg[K.INFECTED]
    if bare.startswith("PUA."):
        return infected if cfg[K.PUA] == "infected" else cfg[K.PUA]
    if bare.startswith("Heuristics."):
        return infected if cfg[K.HEURISTICS] == "infected" else cfg[K.HEURISTICS]
    return infected


def _act(
    action: Action,
    envelope: Envelope,
    cfg: Config,
    *,
    reason: str,
    status: str,
    reject_text: str,
    names: tuple[str, ...] = (),
) -> Decision:
    header = ((STATUS_FIELD, _field(status)),)
    if action == "pass":
        return Decision("pass", 200, "Ok", reason, header, names=names)
    if action == "defer":
        text = "4.7.1 Message deferred: " + _field(status)
        return Decision("defer", 451, text, reason, names=names)
    open_rcpts = envelope.pending
    keep = tuple(r for r in open_rcpts if _passes(r.address, cfg[K.PASS_RECIPIENTS]))
    drop = tuple(r for r in open_rcpts if r not in keep)
    if keep and not drop:
        return Decision("pass", 200, "Ok", f"{reason}; pass-recipients only", header, names=names)
    if action == "reject" and not keep:
        return Decision("reject", 550, _field(reject_text), reason, names=names)
    if action == "reject":
        action = "drop"  # a global filter rejects all or nothing: drop for all but the kept
    note = f"{reason}; kept for {len(keep)} pass-recipient(s)" if keep else reason
    text = "Ok" if action == "drop" else "Ok (quarantined)"
    return Decision(action, 200, text, note, header if keep else (), drop, keep, names=names)


def _passes(address: str, globs: tuple[str, ...]) -> bool:
    address = address.lower()
    return any(fnmatch.fnmatchcase(address, g.lower()) for g in globs)


def _short(name: str) -> str:
    return name.removesuffix(".UNOFFICIAL")


def _field(text: str) -> str:
    """One safe header/reply line: no control characters, bounded length."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean[:900]
