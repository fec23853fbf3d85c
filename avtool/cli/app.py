"""The avtool typer app. Each subcommand lives in its own module; this file only registers them."""

from __future__ import annotations

import sys

import typer

from avtool import __version__
from avtool.cli import batch as batch_cmd
from avtool.cli import config as config_cmd
from avtool.cli import quarantine as quarantine_cmd
from avtool.cli import rescan as rescan_cmd
from avtool.cli import run_get_ides as updates_cmd
from avtool.cli import scan as scan_cmd
from avtool.cli import serve as serve_cmd
from avtool.cli import sig as sig_cmd
from avtool.errors import AvtoolError, ConfigError

app = typer.Typer(
    name="avtool",
    help="Anti-virus filter for the Courier mail server, on ClamAV's clamd.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,  # static scripts in completions/ (python -m avtool.cli.completions)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show a traceback on errors."),
) -> None:
    """Anti-virus filter for the Courier mail server, on ClamAV's clamd."""
    if isinstance(ctx.obj, Run):
        ctx.obj.debug = debug


class Run:
    """What main() learns from the root options while the app runs."""

    debug = False


app.command("config")(config_cmd.config)
app.command("serve")(serve_cmd.serve)
app.command("batch-test")(batch_cmd.batch_test)
app.command("scan")(scan_cmd.scan)
app.command("rescan")(rescan_cmd.rescan)
app.add_typer(sig_cmd.sig, name="sig")
app.add_typer(quarantine_cmd.quarantine, name="quarantine")
app.command("run-get-ides", help=updates_cmd.HELP)(updates_cmd.run_get_ides)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; an AvtoolError becomes one line and its exit code."""
    args = sys.argv[1:] if argv is None else argv
    run = Run()
    try:
        app(args=args, prog_name="avtool", obj=run)
    except AvtoolError as e:
        if run.debug:  # `avtool --debug CMD`; not `serve --debug`, which is the foreground mode
            raise
        if isinstance(e, ConfigError):
            for problem in e.problems:
                print(f"avtool: config error: {problem}", file=sys.stderr)
        else:
            print(f"avtool: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("avtool: interrupted", file=sys.stderr)
        sys.exit(130)
