"""``avtool serve``: the Courier global filter daemon (and, with --debug, the old tavfilter)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from avtool import logs
from avtool.cli.common import ConfigFile, SetOption, load_config, parse_sets
from avtool.config import keys as K

Debug = Annotated[
    bool,
    typer.Option(
        "--debug", help="By hand, in the foreground: no fd 3 check, no pid file, pipe in ./."
    ),
]
SocketDir = Annotated[
    Path | None,
    typer.Option(
        "--socket-dir", help="Socket here, not in Courier's allfilters/.", file_okay=False
    ),
]
Name = Annotated[
    str, typer.Option("--name", help="Socket name; Courier's wrapper passes its own name.")
]


def serve(
    config_file: ConfigFile = None,
    set_: SetOption = None,
    debug: Debug = False,
    socket_dir: SocketDir = None,
    name: Name = "avtool",
) -> None:
    """Run the Courier global filter: courierfilter starts it (`filterctl start avtool`).

    Stops on stdin EOF, SIGTERM or SIGQUIT; SIGHUP reloads config and virus DB, SIGUSR1 the
    config, SIGUSR2 the virus DB (see `avtool sig`).
    """
    from avtool.daemon.options import Options
    from avtool.daemon.server import fd3_open
    from avtool.daemon.server import serve as run

    fd3 = fd3_open()  # before anything opens a file that could take the number 3
    cfg = load_config(config_file, set_, role="daemon")
    logs.setup(3 if debug else cfg[K.VERBOSITY])
    run(cfg, Options(name, debug, fd3, socket_dir, config_file, parse_sets(set_)))
