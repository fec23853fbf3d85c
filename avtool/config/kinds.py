"""Value kinds for configuration keys: how a raw TOML, environment or command-line value
becomes a typed value, and how it is written back as TOML. Also what a key is (``Key``: name,
kind, default, doc and how a reload applies it) and the registry's shape (``table``); the keys
themselves and the registry are in keys.py.

A kind raises ``ValueError`` with a short message ("must be >= 1") that avtool.config turns
into ``key: message (file:line)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Literal, Protocol, TypeVar, get_args

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgKMG]?)[bB]?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class Kind(Generic[T]):
    """How one type of value is checked, read from text and written as TOML."""

    label = "value"

    def parse(self, raw: object) -> T:
        """A value as TOML gives it (already typed) -> checked value, or ValueError."""
        raise ValueError("has no parser")  # pragma: no cover - every kind overrides it

    def from_text(self, text: str) -> T:
        """A value given as text (environment, command line)."""
        return self.parse(text)

    def to_toml(self, value: T) -> str:
        return json.dumps(value)

    def describe(self, value: T) -> str:
        """How ``avtool config`` shows a value."""
        return self.to_toml(value)


def _bounds(value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ValueError(f"must be >= {minimum:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be <= {maximum:g}")


@dataclass(frozen=True)
class Int(Kind[int]):
    minimum: int | None = None
    maximum: int | None = None
    label = "integer"

    def parse(self, raw: object) -> int:
        if isinstance(raw, str):
            raw = raw.strip()
            if not re.fullmatch(r"[+-]?\d+", raw):
                raise ValueError(f"must be an integer, not {raw!r}")
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"must be an integer, not {type(raw).__name__}")
        _bounds(raw, self.minimum, self.maximum)
        return raw


@dataclass(frozen=True)
class Seconds(Kind[float]):
    minimum: float | None = None
    maximum: float | None = None
    label = "seconds"

    def parse(self, raw: object) -> float:
        if isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                raise ValueError(f"must be a number of seconds, not {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"must be a number of seconds, not {type(raw).__name__}")
        value = float(raw)
        _bounds(value, self.minimum, self.maximum)
        return value

    def to_toml(self, value: float) -> str:
        return repr(float(value))


@dataclass(frozen=True)
class Size(Kind[int]):
    """Bytes: an integer, or a string with a K, M or G suffix ("25M"), as clamd.conf writes them."""

    minimum: int | None = None
    maximum: int | None = None
    label = "size"

    def parse(self, raw: object) -> int:
        if isinstance(raw, str):
            m = _SIZE.match(raw)
            if not m:
                raise ValueError(f"must be a size such as 25M or 1048576, not {raw!r}")
            raw = int(m.group(1)) * _UNITS[m.group(2).lower()]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"must be a size such as 25M, not {type(raw).__name__}")
        _bounds(raw, self.minimum, self.maximum)
        return raw

    def to_toml(self, value: int) -> str:
        for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
            if value and value % unit == 0:
                return json.dumps(f"{value // unit}{suffix}")
        return str(value)


@dataclass(frozen=True)
class Bool(Kind[bool]):
    label = "boolean"

    def parse(self, raw: object) -> bool:
        if isinstance(raw, str):
            word = raw.strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"must be true or false, not {raw!r}")
        if not isinstance(raw, bool):
            raise ValueError(f"must be true or false, not {type(raw).__name__}")
        return raw

    def to_toml(self, value: bool) -> str:
        return "true" if value else "false"


@dataclass(frozen=True)
class Choice(Kind[str]):
    choices: tuple[str, ...]
    label = "choice"

    def parse(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string, one of {', '.join(self.choices)}")
        if raw not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, not {raw!r}")
        return raw


@dataclass(frozen=True)
class Text(Kind[str]):
    pattern: str | None = None
    hint: str = ""
    label = "string"

    def parse(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string, not {type(raw).__name__}")
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
            raise ValueError(self.hint or f"must match {self.pattern}")
        return raw


@dataclass(frozen=True)
class TextList(Kind[tuple[str, ...]]):
    """A list of strings; from text, comma-separated. ``item`` checks each element."""

    item: Kind[str] = Text()
    min_items: int = 0
    label = "list"

    def parse(self, raw: object) -> tuple[str, ...]:
        if isinstance(raw, str) or not isinstance(raw, Sequence):
            raise ValueError(f"must be a list of strings, not {type(raw).__name__}")
        values: list[str] = []
        for i, element in enumerate(raw):
            try:
                values.append(self.item.parse(element))
            except ValueError as e:
                raise ValueError(f"item {i + 1}: {e}") from None
        if len(values) < self.min_items:
            raise ValueError(f"needs at least {self.min_items} item(s)")
        return tuple(values)

    def from_text(self, text: str) -> tuple[str, ...]:
        return self.parse([part.strip() for part in text.split(",") if part.strip()])

    def to_toml(self, value: tuple[str, ...]) -> str:
        return json.dumps(list(value))


# How a reload (``avtool sig reload config``) applies a changed key; daemon/reload.py acts on it.
#   live     read where it is used from the current Config: per message in the daemon, per run
#            in the other commands; the reload swaps the Config and nothing else is needed
#   engine   held by the Engine (backends, timeouts, limits): the reload builds a new Engine
#   restart  used once at start (sockets, pid file, pipe, thread and slot counts): the reload
#            reports that it takes effect at the next restart
#   log      the logging setup: the reload applies it with logs.set_verbosity
Reload = Literal["live", "engine", "restart", "log"]
RELOADS: tuple[Reload, ...] = get_args(Reload)


@dataclass(frozen=True, eq=False)
class Key(Generic[T]):
    """One configuration key: ``section.name``, its kind, default, a one-line doc, and how a
    reload applies a new value."""

    name: str
    kind: Kind[T]
    default: T
    doc: str
    reload: Reload

    @property
    def env(self) -> str:
        return "AVTOOL_" + self.name.replace(".", "_").upper()


def key(name: str, kind: Kind[T], default: object, doc: str, *, reload: Reload) -> Key[T]:
    """A key whose default its kind has checked, so that a bad default fails at import."""
    if reload not in RELOADS:
        raise ValueError(f"{name}: reload must be one of {', '.join(RELOADS)}, not {reload!r}")
    return Key(name, kind, kind.parse(default), doc, reload)


def table(keys: Iterable[Key[Any]]) -> Mapping[str, Key[Any]]:
    """The key registry: every key by name, in the order given (the order of ``avtool config``
    and of the sample file), read-only. A name given twice is a programming error."""
    by_name: dict[str, Key[Any]] = {}
    for k in keys:
        if k.name in by_name:
            raise ValueError(f"{k.name}: defined twice")
        by_name[k.name] = k
    return MappingProxyType(by_name)


class Resolved(Protocol):
    """What a cross-key check reads of a Config (keys.py's CHECKS): typed values and where each
    came from. A protocol, so that keys.py need not import the Config that imports it."""

    def __getitem__(self, k: Key[T]) -> T: ...

    def source(self, k: Key[Any]) -> object: ...
