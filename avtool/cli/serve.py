"""``avtool serve``: the Courier global filter daemon (and, with --debug, the old tavfilter)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from avtool import keys as K
from avtool import logs
from avtool.cli.common import ConfigFile, SetOption, load_config, parse_sets


def serve(
    config_file: ConfigFile = None,
    set_: SetOption = None,
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Foreground by hand: no fd 3 check, no pid file, pipe in ./, verbose.",
    ),
    socket_dir: Path | None = typer.Option(
        None,
        "--socket-dir",
        help="Put the socket here instead of Courier's allfilters/.",
        file_okay=False,
    ),
    name: str = typer.Option(
        "avtool", "--name", help="Socket name; the Courier wrapper passes basename of its $0."
    ),
) -> None:
    """Run the Courier global filter: courierfilter starts it (`filterctl start avtool`).

    Stops on stdin EOF, SIGTERM or SIGQUIT; SIGHUP reloads config and virus DB, SIGUSR1 the
    config, SIGUSR2 the virus DB (see `avtool sig`).
    """
    from avtool.server import Options
    from avtool.server import serve as run

    cfg = load_config(config_file, set_, role="daemon")
    logs.setup(3 if debug else cfg[K.VERBOSITY])
    options = Options(name, debug, socket_dir, config_file, parse_sets(set_))
    run(cfg, options)
