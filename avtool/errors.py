"""The one exception family of avtool, caught at the CLI edge.

Each subclass carries the exit status the CLI uses for it (README, "Exit status").
"""

from __future__ import annotations


class AvtoolError(Exception):
    """Base of every error avtool raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code = 3


class UsageError(AvtoolError):
    """The command line or an input named on it is wrong."""

    exit_code = 2


class ConfigError(AvtoolError):
    """The configuration does not validate. ``problems`` has one line per mistake."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class EngineError(AvtoolError):
    """clamd could not be reached or answered something unusable."""

    exit_code = 3


class DaemonError(AvtoolError):
    """The running filter daemon could not be reached or refused a request."""

    exit_code = 3
