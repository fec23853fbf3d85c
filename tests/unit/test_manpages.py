"""share/manpages.py: the man pages the Debian package builds from the app (one per command),
found through the entry point, valid roff (groff -ww, lexgrog as lintian uses it), with text
that looks like roff kept as text."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer

from avtool import __version__
from avtool.cli.app import app

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


manpages = _load("avtool_share_manpages", ROOT / "share" / "manpages.py")
check_vendored = _load("avtool_debian_check_vendored", ROOT / "debian" / "check-vendored.py")


def _commands() -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    return dict(group.commands)


def test_the_app_is_found_through_the_entry_point_not_a_module_path() -> None:
    found, version = manpages.find_app()
    assert found is app
    assert version == __version__


def test_one_page_per_command_with_every_option_and_argument() -> None:
    pages = manpages.render(app, "9.9", "2026-01-02")
    commands = _commands()
    assert set(pages) == {"avtool.1"} | {f"avtool-{name}.1" for name in commands}
    for name, command in commands.items():
        page = pages[f"avtool-{name}.1"]
        assert page.startswith(f'.TH {manpages.esc("AVTOOL-" + name.upper())} 1 "2026-01-02"')
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if param.param_type_name == "option":
                    assert f"\\fB{manpages.esc(opt)}\\fR" in page, (name, opt)
        assert "\\fB\\-h\\fR, \\fB\\-\\-help\\fR" in page
        assert f"\\fB{manpages.esc('avtool-' + name)}\\fR(1)" in pages["avtool.1"]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_every_page_is_valid_roff_with_a_whatis_entry(tmp_path: Path) -> None:
    for name, text in manpages.render(app, __version__, "2026-01-02").items():
        page = tmp_path / name
        page.write_text(text)
        done = subprocess.run(
            ["groff", "-man", "-ww", "-z", "-K", "utf8", str(page)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, ""), name
        if shutil.which("lexgrog"):  # what lintian's bad-whatis-entry check runs
            whatis = subprocess.run(["lexgrog", str(page)], capture_output=True, text=True)
            stem = name.removesuffix(".1")
            assert whatis.returncode == 0 and f': "{stem} - ' in whatis.stdout, whatis.stdout


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_help_that_looks_like_roff_is_shown_as_written(tmp_path: Path) -> None:
    """A help line starting with . or ' would be a roff request; backslashes are escapes."""
    odd = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]})

    @odd.callback()
    def _root() -> None:
        """Odd tool."""

    @odd.command("do-it")
    def _do_it(
        path: str = typer.Option(
            "C:\\temp", "--path", help=".dot and 'quote first; a \\fB backslash."
        ),
    ) -> None:
        """Do it.

        .TH NOT A HEADER

        'also not a request, and `code`.
        """

    pages = manpages.render(odd, "1.0", "2026-01-02")
    page = tmp_path / "avtool-do-it.1"
    page.write_text(pages["avtool-do-it.1"])
    shown = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P-cbou", "-ww", str(page)],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(shown.stdout.split())
    assert shown.stderr == ""
    assert ".TH NOT A HEADER" in text
    assert "'also not a request, and code." in text
    assert ".dot and 'quote first; a \\fB backslash." in text
    assert "default: C:\\temp" in text


def test_the_date_follows_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")  # reproducible builds
    assert manpages.build_date() == "1970-01-02"


def _dist(lib: Path, name: str, version: str) -> None:
    info = lib / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_the_build_refuses_a_library_that_is_not_pinned_or_not_in_copyright(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = tmp_path / "lib"
    for name, version in (("avtool", "1.0"), ("typer", "0.29.2"), ("Sneaky-Lib", "1.0")):
        _dist(lib, name, version)
    pins = tmp_path / "requirements.txt"
    pins.write_text("# pinned\ntyper==0.29.2\nrich==15.0.0\n")
    copyright_file = tmp_path / "copyright"
    copyright_file.write_text("Files: usr/lib/avtool/python/typer-*.dist-info/*\n")
    assert check_vendored.main(str(lib), str(pins), str(copyright_file)) == 1
    err = capsys.readouterr().err
    assert "sneaky-lib 1.0 is installed but not pinned" in err
    assert "rich is pinned but not installed" in err
    assert "sneaky-lib: no Files: stanza for Sneaky_Lib-*.dist-info" in err
    assert "typer" not in err
    pins.write_text("typer==0.29.2\n")
    (lib / "Sneaky_Lib-1.0.dist-info" / "METADATA").unlink()
    (lib / "Sneaky_Lib-1.0.dist-info").rmdir()
    assert check_vendored.main(str(lib), str(pins), str(copyright_file)) == 0
