"""``avtool batch-test``: requests on stdin instead of the socket, through the same pipeline."""

from __future__ import annotations

import sys
import time

import typer

from avtool import logs
from avtool.cli.common import ConfigFile, SetOption, load_config
from avtool.config import keys as K


def batch_test(
    config_file: ConfigFile = None,
    set_: SetOption = None,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Decide and print, but leave control and data files untouched."
    ),
) -> None:
    """Read data and control file names on stdin, as Courier writes them on the socket.

    Each group is a data file path, one or more control file paths, and a blank line. Each
    reply is printed as the daemon would send it. Exit 0 if every reply accepts, 1 if a virus
    was found, 3 if any reply was a 4xx.
    """
    from avtool.courier.protocol import ProtocolError, format_reply
    from avtool.daemon.batch import requests_from
    from avtool.daemon.pipeline import Pipeline
    from avtool.engine import Engine
    from avtool.engine.verdict import Infected

    cfg = load_config(config_file, set_, role="daemon")
    logs.setup(cfg[K.VERBOSITY])
    pipeline = Pipeline(cfg, Engine.from_config(cfg))
    status = 0
    for item in requests_from(sys.stdin.buffer):
        if isinstance(item, ProtocolError):
            print(f"avtool: bad request: {item}", file=sys.stderr)
            sys.stdout.buffer.write(format_reply(item.reply))
            status = 3
            continue
        deadline = time.monotonic() + cfg[K.MESSAGE_TIMEOUT]
        outcome = pipeline.handle(item, deadline, dry_run=dry_run)
        sys.stdout.buffer.write(format_reply(outcome.reply))
        sys.stdout.flush()
        if outcome.reply.code >= 400 and outcome.reply.code < 500:
            status = 3
        elif isinstance(outcome.verdict, Infected) and status == 0:
            status = 1
    raise typer.Exit(status)
