#!/usr/bin/env python3
"""Man pages for avtool, generated from its typer app: avtool(1) and avtool-COMMAND(1).

    python3 share/manpages.py OUTDIR [--path DIR]

debian/rules runs it at package build time on the avtool it has just installed (``--path``: the
package's private library dir), so the pages say what ``--help`` says and never go stale. The
app is found through avtool's console-script entry point (pyproject's ``[project.scripts]``),
not by a module path, so a reshuffle of the package's modules does not break the build.

Each page is plain man(7) roff, checked by ``groff -man -ww -z`` and lintian (tests/unit/
test_manpages.py).
"""

from __future__ import annotations

import argparse
import datetime
import enum
import importlib
import importlib.metadata
import os
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIST = "avtool"
SECTION = "1"


@dataclass(frozen=True)
class Param:
    left: str  # roff: the option's names and its value, or the argument's name
    help: str  # roff


@dataclass(frozen=True)
class Page:
    name: str  # "avtool" or "avtool-scan"
    summary: str  # the first line of the help: the whatis entry
    synopsis: str  # roff
    paragraphs: tuple[str, ...]  # roff, one per paragraph of the help
    arguments: tuple[Param, ...]
    options: tuple[Param, ...]


# --- roff --------------------------------------------------------------------------------


def esc(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped (groff_man(7): ``\\-`` is the
    minus that can be typed back), `code` in bold."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)


def _line(text: str) -> str:
    """A text line that cannot be taken for a request: a leading . or ' is escaped."""
    return "\\&" + text if text[:1] in (".", "'") else text


def paragraphs(help_text: str) -> list[str]:
    """click's help: paragraphs separated by blank lines, lines re-wrapped by the reader."""
    text = help_text.replace("\b", "")
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def first_sentence(help_text: str) -> str:
    found = paragraphs(help_text)
    return found[0].rstrip(".") if found else ""


# --- reading the app (duck typing, as avtool/cli/completions.py does: typer vendors click) --


def _annotation(param: Any) -> Any:
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is None:
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple) and args:
        return args[0]
    if args and typing.get_origin(annotation) is not None:  # X | None
        return args[0]
    return annotation


def _choices(param: Any) -> list[str]:
    annotation = _annotation(param)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    return [str(c) for c in getattr(getattr(param, "type", None), "choices", None) or ()]


def _metavar(param: Any) -> str:
    if getattr(param, "metavar", None):
        return str(param.metavar)
    if choices := _choices(param):
        return "|".join(choices)
    annotation = _annotation(param)
    names = {int: "INTEGER", float: "NUMBER", Path: "PATH"}
    if isinstance(annotation, type):
        for kind, name in names.items():
            if issubclass(annotation, kind):
                return name
    return str(getattr(param, "name", "") or "value").upper()


def _default(param: Any) -> str:
    value = getattr(param, "default", None)
    if value is None or value is False or value == "" or value == () or callable(value):
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    return str(value)


def _range(param: Any) -> str:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        return f"{low} to {high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return ""


def _param_help(param: Any) -> str:
    text = " ".join(str(getattr(param, "help", None) or "").split())
    notes = [f"range: {r}" for r in [_range(param)] if r]
    if (default := _default(param)) and not getattr(param, "is_flag", False):
        notes.insert(0, f"default: {default}")
    if getattr(param, "multiple", False):
        notes.append("may be given more than once")
    if notes:
        text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes).capitalize()
    return esc(text)


def _option(param: Any) -> Param:
    names = ", ".join(f"\\fB{esc(n)}\\fR" for n in [*param.opts, *param.secondary_opts])
    if not getattr(param, "is_flag", False):
        names += f" \\fI{esc(_metavar(param))}\\fR"
    return Param(names, _param_help(param))


def _argument(param: Any) -> Param:
    name = str(getattr(param, "metavar", None) or param.name.upper()).rstrip(".")
    if choices := _choices(param):
        name = "|".join(choices)
    return Param(f"\\fI{esc(name)}\\fR", _param_help(param))


def _help_option(command: Any) -> Param:
    settings = getattr(command, "context_settings", None) or {}
    names = settings.get("help_option_names") or ["--help"]
    return Param(", ".join(f"\\fB{esc(n)}\\fR" for n in names), "Show the help and exit.")


def _synopsis_argument(param: Any) -> str:
    text = f"\\fI{esc(str(getattr(param, 'metavar', None) or param.name.upper()))}\\fR"
    if choices := _choices(param):
        text = "|".join(f"\\fB{esc(c)}\\fR" for c in choices)
    if getattr(param, "nargs", 1) == -1 and not text.endswith("...\\fR"):
        text += "..."
    return text if getattr(param, "required", False) else f"[{text}]"


def _page(name: str, command: Any, help_text: str, synopsis: str, group: Any) -> Page:
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    return Page(
        name=name,
        summary=first_sentence(help_text),
        synopsis=synopsis,
        paragraphs=tuple(esc(p) for p in paragraphs(help_text)),
        arguments=tuple(_argument(p) for p in params if p.param_type_name == "argument"),
        options=(
            *(_option(p) for p in params if p.param_type_name == "option"),
            _help_option(group),
        ),
    )


def pages(app: Any) -> list[Page]:
    """avtool's page, then one per visible subcommand (sorted)."""
    import typer

    group: Any = typer.main.get_command(app)
    root_help = str(group.help or "")
    found = [
        _page(
            "avtool",
            group,
            root_help,
            "\\fBavtool\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
            group,
        )
    ]
    for sub in sorted(group.commands):
        command = group.commands[sub]
        if getattr(command, "hidden", False):
            continue
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        args = [_synopsis_argument(p) for p in params if p.param_type_name == "argument"]
        synopsis = " ".join([f"\\fBavtool {esc(sub)}\\fR", "[\\fIOPTIONS\\fR]", *args])
        found.append(_page(f"avtool-{sub}", command, str(command.help or ""), synopsis, group))
    return found


# --- the pages -----------------------------------------------------------------------------

# What avtool(1) says beyond the app's help: from README.md (Exit status, Configuration).
ROOT_EXTRA = """.SH EXIT STATUS
.TP
0
ok; every message clean
.TP
1
a virus was found, or a check failed
.TP
2
usage or configuration error
.TP
3
engine or daemon error (clamd unreachable, no running filter)
.SH ENVIRONMENT
.TP
\\fBAVTOOL_CONFIG\\fR
The config file to read, when \\fB\\-f\\fR is not given.
.TP
\\fBAVTOOL_\\fISECTION\\fB_\\fIKEY\\fR
Overrides one key of the config (lists comma\\-separated); \\fB\\-\\-set\\fR overrides it in turn.
.SH FILES
.TP
\\fI/etc/courier/filters/avtool.conf\\fR
The config of the filter (TOML); \\fBavtool config \\-\\-sample\\fR prints every key with its
default, \\fBavtool config\\fR the effective values and where each came from.
.TP
\\fI~/.config/avtool/avtool.conf\\fR
A user's config for the commands a user runs (\\fBscan\\fR, \\fBconfig\\fR), read before the
system one.
"""


def roff(page: Page, version: str, date: str, commands: list[Page]) -> str:
    title = esc(page.name.upper())
    out = [
        f'.TH {title} {SECTION} "{date}" "avtool {esc(version)}" "avtool manual"',
        f'.\\" generated by share/manpages.py from avtool {esc(version)}; do not edit',
        '.\\" paths and options are not to be hyphenated, nor lines stretched to fill',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{esc(page.name)} \\- {page.summary and esc(page.summary)}",
        ".SH SYNOPSIS",
        page.synopsis,
        ".SH DESCRIPTION",
    ]
    for i, text in enumerate(page.paragraphs):
        if i:
            out.append(".PP")
        out.append(_line(text))
    for heading, params in (("ARGUMENTS", page.arguments), ("OPTIONS", page.options)):
        if params:
            out.append(f".SH {heading}")
            for p in params:
                out += [".TP", _line(p.left), _line(p.help)]
    if page.name == "avtool":
        out.append(".SH COMMANDS")
        for c in commands:
            sub = c.name.removeprefix("avtool-")
            out += [".TP", f"\\fB{esc(sub)}\\fR", _line(f"{esc(c.summary)}; see {esc(c.name)}(1).")]
        out.append(ROOT_EXTRA.rstrip("\n"))
    see = [(c.name, SECTION) for c in commands] if page.name == "avtool" else [("avtool", SECTION)]
    see += [("courierfilter", "8"), ("clamd", "8"), ("clamd.conf", "5")]
    out += [".SH SEE ALSO", ", ".join(f"\\fB{esc(name)}\\fR({n})" for name, n in see)]
    return "\n".join(out) + "\n"


def render(app: Any, version: str, date: str) -> dict[str, str]:
    """File name -> roff text, for avtool(1) and each subcommand."""
    found = pages(app)
    return {f"{p.name}.{SECTION}": roff(p, version, date, found[1:]) for p in found}


def build_date() -> str:
    """SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog) for reproducible
    pages; today otherwise."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch
        else datetime.datetime.now(datetime.UTC)
    )
    return when.strftime("%Y-%m-%d")


def find_app() -> tuple[Any, str]:
    """avtool's typer app and version, from the installed distribution's entry point."""
    import typer

    dist = importlib.metadata.distribution(DIST)
    points = [e for e in dist.entry_points if e.group == "console_scripts" and e.name == DIST]
    if not points:
        raise SystemExit(f"manpages: {DIST} has no console script {DIST!r}")
    module = importlib.import_module(points[0].module)
    apps = {id(v): v for v in vars(module).values() if isinstance(v, typer.Typer)}
    if len(apps) != 1:
        raise SystemExit(
            f"manpages: {points[0].module} holds {len(apps)} typer apps; expected exactly one"
        )
    return next(iter(apps.values())), dist.version


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--path", help="import avtool and its dependencies from this dir first")
    args = parser.parse_args(argv)
    if args.path:
        sys.path.insert(0, args.path)
    app, version = find_app()
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name, text in render(app, version, build_date()).items():
        (args.outdir / name).write_text(text, encoding="utf-8")
        print(args.outdir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
