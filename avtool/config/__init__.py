"""The configuration: every key with its kind, default and doc; resolution of one frozen Config.

Precedence, lowest first: default < file < environment (``AVTOOL_SECTION_KEY``) < command line.
Which file: ``-f/--config-file`` > ``AVTOOL_CONFIG`` > for the daemon ``/etc/courier/filters/
avtool.conf``; for user commands the platformdirs user config file, then that system file.

Keys are defined in keys.py (one entry each), which also builds the registry ``KEYS``; the
cross-key ``CHECKS`` that this module uses are in checks.py; neither imports from here. Values
are read with ``cfg[keys.NAME]``, typed.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from avtool.config.checks import CHECKS
from avtool.config.keys import KEYS
from avtool.config.kinds import Key
from avtool.errors import ConfigError

T = TypeVar("T")

SYSTEM_CONFIG = Path("/etc/courier/filters/avtool.conf")
ENV_FILE = "AVTOOL_CONFIG"
Role = Literal["daemon", "user"]


# ---- resolution ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Where a value came from: ``default``, ``file`` (where = path:line), ``env``, ``cli``."""

    kind: Literal["default", "file", "env", "cli"]
    where: str = ""

    def __str__(self) -> str:
        return self.where or self.kind


@dataclass(frozen=True)
class Config:
    """The resolved configuration: frozen, built once by ``resolve`` and passed down."""

    values: Mapping[str, Any]
    sources: Mapping[str, Source]
    path: Path | None = None
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, k: Key[T]) -> T:
        value: T = self.values[k.name]
        return value

    def source(self, k: Key[Any]) -> Source:
        return self.sources[k.name]

    def items(self) -> Iterator[tuple[Key[Any], Any, Source]]:
        for name, k in KEYS.items():
            yield k, self.values[name], self.sources[name]

    def changed(self, other: Config) -> list[Key[Any]]:
        """The keys whose value differs in ``other``, in registry order."""
        return [k for n, k in KEYS.items() if self.values[n] != other.values[n]]

    def changes(self, other: Config) -> list[str]:
        """Keys whose value differs in ``other``, as ``name: old -> new`` lines."""
        return [
            f"{k.name}: {k.kind.describe(self[k])} -> {k.kind.describe(other[k])}"
            for k in self.changed(other)
        ]

    def to_toml(self, *, sources: bool = False) -> str:
        """The values as a TOML file that resolves to this same Config; ``sources`` adds a
        comment line per key with its kind, default, where the value came from and how a reload
        applies it."""
        return _toml(self.items(), sources=sources)

    def override(self, k: Key[T], value: T, source: Source | None = None) -> Config:
        """A copy with one value replaced (doctor probes one backend at a time, for example)."""
        values = dict(self.values, **{k.name: value})
        sources = dict(self.sources, **{k.name: source or Source("cli", "override")})
        return Config(values, sources, self.path, self.notes)

    @staticmethod
    def sample() -> str:
        """A commented config file: every key with its doc and default, all commented out."""
        head = (
            "# avtool configuration (TOML). Every key is shown with its default, commented out:\n"
            "# uncomment and change what you need. `avtool config` shows the effective values.\n"
        )
        defaults = ((k, k.default, Source("default")) for k in KEYS.values())
        return head + "\n" + _toml(defaults, commented=True)

    @classmethod
    def defaults(cls) -> Config:
        return cls({n: k.default for n, k in KEYS.items()}, {n: Source("default") for n in KEYS})

    @classmethod
    def resolve(
        cls,
        path: Path | None = None,
        *,
        role: Role = "user",
        overrides: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        """Defaults < file < environment < ``overrides`` (command line, ``key=value`` text).

        Raises ConfigError listing every problem at once.
        """
        env = os.environ if env is None else env
        notes: list[str] = []
        problems: list[str] = []
        values = {n: k.default for n, k in KEYS.items()}
        sources = {n: Source("default") for n in KEYS}

        chosen = config_path(path, role=role, env=env, notes=notes)
        if chosen is not None:
            for name, raw, where in _read_file(chosen, problems):
                _assign(name, raw, Source("file", where), values, sources, problems, text=False)
        for name, k in KEYS.items():
            if k.env in env:
                _assign(name, env[k.env], Source("env", k.env), values, sources, problems)
        for name, text in (overrides or {}).items():
            _assign(name, text, Source("cli", "command line"), values, sources, problems)

        cfg = cls(values, sources, chosen, tuple(notes))
        if not problems:
            problems.extend(p for check in CHECKS if (p := check(cfg)) is not None)
        if problems:
            raise ConfigError(problems)
        return cfg


def _toml(
    entries: Iterable[tuple[Key[Any], Any, Source]],
    *,
    sources: bool = False,
    commented: bool = False,
) -> str:
    lines: list[str] = []
    section = None
    # One table per section even when a section's keys are not adjacent in keys.py (keys are
    # appended at its end): a TOML table declared twice does not parse.
    by_section: dict[str, list[tuple[Key[Any], Any, Source]]] = {}
    for entry in entries:
        by_section.setdefault(entry[0].name.split(".", 1)[0], []).append(entry)
    for k, value, source in (entry for group in by_section.values() for entry in group):
        head, name = k.name.split(".", 1)
        if head != section:
            lines += ([""] if section else []) + [f"[{head}]"]
            section = head
        lines.append(f"# {k.doc}")
        if sources:
            default = k.kind.to_toml(k.default)
            lines.append(f"# {k.kind.label}, default {default}, from {source}; reload: {k.reload}")
        lines.append(f"{'#' if commented else ''}{name} = {k.kind.to_toml(value)}")
    return "\n".join(lines) + "\n"


def user_config_path() -> Path:
    import platformdirs  # only user commands need it

    return Path(platformdirs.user_config_dir("avtool")) / "avtool.conf"


def config_path(
    path: Path | None,
    *,
    role: Role,
    env: Mapping[str, str],
    notes: list[str] | None = None,
) -> Path | None:
    """The file to read, or None for defaults only. A file named explicitly must exist."""
    if path is not None:
        return path
    if env.get(ENV_FILE):
        return Path(env[ENV_FILE])
    candidates = [SYSTEM_CONFIG] if role == "daemon" else [user_config_path(), SYSTEM_CONFIG]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate
        except PermissionError:
            if notes is not None:
                notes.append(f"{candidate}: not readable by this user, skipped")
    return None


def _assign(
    name: str,
    raw: object,
    source: Source,
    values: dict[str, Any],
    sources: dict[str, Source],
    problems: list[str],
    *,
    text: bool = True,
) -> None:
    k = KEYS.get(name)
    if k is None:
        problems.append(f"{name}: unknown key{_did_you_mean(name)} ({source})")
        return
    try:
        values[name] = k.kind.from_text(raw) if text and isinstance(raw, str) else k.kind.parse(raw)
    except ValueError as e:
        problems.append(f"{name}: {e} ({source})")
        return
    sources[name] = source


def _did_you_mean(name: str) -> str:
    names = list(KEYS)
    short = {n.split(".", 1)[1]: n for n in names}
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not close:
        close = [short[c] for c in difflib.get_close_matches(name.split(".")[-1], short, n=1)]
    return f"; did you mean {close[0]}?" if close else ""


_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_TABLE = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*=")


def _read_file(path: Path, problems: list[str]) -> Iterator[tuple[str, object, str]]:
    """Yield (dotted key, raw TOML value, "path:line") for every leaf value in the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problems.append(f"{path}: cannot read: {e.strerror or e}")
        return
    except UnicodeDecodeError:
        problems.append(f"{path}: not UTF-8 text")
        return
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_LINE.search(str(e))
        where = f"{path}:{m.group(1)}" if m else str(path)
        problems.append(f"{where}: TOML syntax error: {_TOML_LINE.sub('', str(e)).strip()}")
        return
    lines = _key_lines(text)
    for name, raw in _flatten(data):
        yield name, raw, f"{path}:{lines[name]}" if name in lines else str(path)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    for name, value in data.items():
        dotted = prefix + name
        if isinstance(value, dict) and (prefix or dotted not in KEYS):
            if not prefix and not any(n.startswith(dotted + ".") for n in KEYS):
                yield dotted, value  # an unknown table: one problem, not one per key
                continue
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _key_lines(text: str) -> dict[str, int]:
    """Line numbers of ``key =`` lines and ``[table]`` headers, by dotted name (plain TOML only)."""
    found: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        if m := _TABLE.match(line):
            table = m.group(1)
            found.setdefault(table, number)
        elif m := _ASSIGN.match(line):
            found.setdefault(f"{table}.{m.group(1)}" if table else m.group(1), number)
    return found
