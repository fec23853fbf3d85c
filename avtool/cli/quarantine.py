"""``avtool quarantine``: list, show, delete and purge what the filter held (issue 17).

Only root and the filter's user (courier) may: the store is theirs (0700), and a held
message is mail for somebody else. Anyone else gets one line and exit 2 before the store is
touched, not an EACCES half way through.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from typing import Annotated

import typer

from avtool.cli.common import ConfigFile, SetOption, load_config
from avtool.config import keys as K
from avtool.errors import UsageError
from avtool.quarantine import show as show_mod
from avtool.quarantine.store import Entry, Store, check_id
from avtool.scan.mailbox.message import printable

COURIER_USER = "courier"

quarantine = typer.Typer(
    help="List, show, delete and purge the messages the filter quarantined.",
    no_args_is_help=True,
)
Ids = Annotated[list[str], typer.Argument(metavar="ID...", help="Quarantine ids (from list).")]


def _allowed() -> None:
    euid = os.geteuid()
    if euid == 0:
        return
    try:
        if euid == pwd.getpwnam(COURIER_USER).pw_uid:
            return
    except KeyError:
        pass
    raise UsageError(
        f"quarantine: permission denied: only root and the filter's user ({COURIER_USER}) may"
    )


def _open(config_file: ConfigFile, sets: SetOption) -> Store:
    _allowed()
    cfg = load_config(config_file, sets, role="daemon")
    return Store(str(cfg[K.QUARANTINE_DIR]))


@quarantine.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    config_file: ConfigFile = None,
    sets: SetOption = None,
) -> None:
    """Every held message, newest first."""
    with _open(config_file, sets) as store:
        entries = list(store.entries())
    if as_json or not sys.stdout.isatty():
        for e in entries:
            typer.echo(json.dumps(e.as_json(), sort_keys=True))
        return
    typer.echo(f"{'ID':<40} {'RECEIVED':<20} {'VERDICT':<9} {'SIZE':>8} SENDER / NAMES")
    for e in entries:
        typer.echo(_row(e))


def _row(e: Entry) -> str:
    when = e.received.strftime("%Y-%m-%d %H:%M:%S") if e.received else "-"
    size = str(e.size) if e.size is not None else "-"
    what = e.error or f"<{printable(e.sender or '')}> {' '.join(e.names)}"
    return f"{e.id:<40} {when:<20} {e.verdict or '-':<9} {size:>8} {what}"


@quarantine.command("show")
def show(
    ident: Annotated[str, typer.Argument(metavar="ID")],
    raw: Annotated[bool, typer.Option("--raw", help="Write the message bytes.")] = False,
    config_file: ConfigFile = None,
    sets: SetOption = None,
) -> None:
    """Envelope, verdict, header and MIME structure of one held message."""
    check_id(ident)
    _allowed()
    cfg = load_config(config_file, sets, role="daemon")
    with Store(str(cfg[K.QUARANTINE_DIR])) as store:
        data = store.data(ident)
        entry = store.entry(ident)
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from avtool.engine import Engine, secondlook

    engine = Engine.from_config(cfg.override(K.TRANSFER, "auto"))
    for line in show_mod.render(entry, data, lambda b: secondlook.scan_bytes(engine, b)):
        typer.echo(line)


@quarantine.command("delete")
def delete(ids: Ids, config_file: ConfigFile = None, sets: SetOption = None) -> None:
    """Remove held messages for good."""
    for ident in ids:
        check_id(ident)
    with _open(config_file, sets) as store:
        for ident in ids:
            store.delete(ident)
            typer.echo(f"deleted {ident}")


@quarantine.command("purge")
def purge(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            metavar="DAYS",
            min=0,
            help="Age in days (default: policy.quarantine_days, where 0 keeps everything).",
        ),
    ] = None,
    config_file: ConfigFile = None,
    sets: SetOption = None,
) -> None:
    """Remove every held message received more than DAYS days ago."""
    _allowed()
    cfg = load_config(config_file, sets, role="daemon")
    days: float = cfg[K.QUARANTINE_DAYS] if older_than is None else older_than
    if older_than is None and days == 0:
        typer.echo("policy.quarantine_days = 0: held messages are kept, none purged")
        return
    with Store(str(cfg[K.QUARANTINE_DIR])) as store:
        gone = store.purge(days)
    typer.echo(f"purged {len(gone)} message(s)")


@quarantine.command("digest")
def digest(
    to_stdout: Annotated[
        bool,
        typer.Option("--print", help="Write the digest to stdout instead; send nothing."),
    ] = False,
    scheduled: Annotated[
        bool,
        typer.Option("--scheduled", help="Do nothing unless notify.digest is daily (cron)."),
    ] = False,
    config_file: ConfigFile = None,
    sets: SetOption = None,
) -> None:
    """Mail notify.postmaster the messages quarantined since the last digest."""
    from avtool.quarantine import digest as digest_mod
    from avtool.quarantine import notices

    _allowed()
    cfg = load_config(config_file, sets, role="daemon")
    if scheduled and cfg[K.NOTIFY_DIGEST] != "daily":
        return
    with Store(str(cfg[K.QUARANTINE_DIR])) as store:
        stamp = digest_mod.read_stamp(store)
        entries = digest_mod.new_since(store, stamp)
        if not entries:
            typer.echo(f"nothing quarantined since {stamp.sent or 'the quarantine began'}")
            return
        note = digest_mod.notice(cfg, entries, stamp)
        if to_stdout:
            sys.stdout.buffer.write(notices.compose(cfg, note))
            sys.stdout.buffer.flush()
            return
        if not note.to:
            raise UsageError("notify.postmaster is empty: nobody to send the digest to")
        notices.send(cfg, list(note.to), notices.compose(cfg, note))
        try:
            digest_mod.write_stamp(store, stamp, entries)
        except OSError as e:
            raise notices.NoticeError(
                f"digest sent, but {digest_mod.STAMP} not written ({e.strerror or e}): "
                "the next digest lists the same messages again"
            ) from None
    typer.echo(f"digest of {len(entries)} message(s) sent to {', '.join(note.to)}")
