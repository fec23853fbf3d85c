"""``avtool run-get-ides``: maildrop's xfilter for update announcements (avfilter's)."""

from __future__ import annotations

import grp
import os
import pwd
import sys
from typing import Annotated

import typer

from avtool.errors import ConfigError, UsageError
from avtool.updates import MAX_MESSAGE, SCRIPT

HELP = (
    f"Run the update script {SCRIPT} with privileges (sudo -n), the message on its stdin.\n\n"
    'For maildrop, on a mailbox that receives signature-update announcements: xfilter "avtool '
    'run-get-ides". Prints the message back with its Subject tagged [RC], RC being the last '
    "`subject:` line the script printed, and the script's output as the body. The script's "
    "stderr goes to syslog (mail), critical, one step lower per leading '#'.\n\n"
    "The script is fixed at install time: nothing in the message, the arguments or the "
    "environment can choose another program. ARGS are passed to the script.\n\n"
    "Envelope senders are forgeable: root's script runs at most one update at a time and one "
    "per its MIN_INTERVAL, whoever asks. Here, updates.senders (globs; empty: any) and "
    "updates.min_interval skip a mail early: it is kept, tagged [SKIPPED ...], exit 0 (an error "
    "exit would make maildrop defer it, and Courier deliver it again). The sender is maildrop's "
    "FROM (its -f)."
)


def run_get_ides(
    args: Annotated[list[str] | None, typer.Argument(help="Passed to the script.")] = None,
    run_as: Annotated[
        str | None, typer.Option("-D", help="Run the script as UID/GID (numbers or names).")
    ] = None,
    timeout: Annotated[
        float, typer.Option("-t", "--timeout", help="Seconds before the script is killed.")
    ] = 600.0,
) -> None:
    from avtool import updates
    from avtool.config import Config
    from avtool.config import keys as K

    ids = _ids(run_as) if run_as else None
    message = sys.stdin.buffer.read(MAX_MESSAGE)
    while sys.stdin.buffer.read(1 << 16):  # the rest is drained, so maildrop's write succeeds
        pass
    try:
        cfg = Config.resolve(role="user")
    except ConfigError as e:  # kept, tagged, no update: a deferral would only come back
        body = "".join(f"avtool: config error: {p}\n" for p in e.problems).encode()
        outcome: updates.Outcome | None = updates.Outcome("FAILED: config", body, [], None)
    else:
        outcome = updates.skipped(
            os.environ.get("FROM"),  # maildrop's -f; never put into a command line
            senders=cfg[K.UPDATE_SENDERS],
            min_interval=cfg[K.UPDATE_INTERVAL],
        )
    if outcome is None:
        outcome = updates.run(message, list(args or []), run_as=ids, timeout=timeout)
    else:
        updates.log_stderr([b"###" + outcome.stdout.strip()])
    updates.log_stderr(outcome.stderr_lines)
    sys.stdout.buffer.write(updates.tagged_message(message, outcome))
    sys.stdout.flush()


def _ids(text: str) -> tuple[int, int]:
    user, sep, group = text.partition("/")
    if not sep or not user or not group:
        raise UsageError(f"-D {text!r}: expected UID/GID")
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError as e:
        raise UsageError(f"-D {text!r}: no such user or group") from e
    return uid, gid
