"""logs.line writes what logger.log would, and gives way to any other set-up."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

import pytest

from avtool import logs


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What went to sys.stderr (setup() takes the one pytest has in place for the test)."""
    root = logging.getLogger("avtool")
    saved = (root.handlers[:], root.level, root.propagate, logs._direct)
    yield lambda: capsys.readouterr().err
    root.handlers[:], root.level, root.propagate, logs._direct = saved


def test_line_writes_what_the_logger_would(stderr: Callable[[], str]) -> None:
    logs.setup(1)
    log = logging.getLogger("avtool")
    log.info("%s", "id=1 verdict=clean")
    logs.line(log, logging.INFO, "id=1 verdict=clean")
    logs.line(log, logging.WARNING, "id=2 action=defer")
    logs.line(log, logging.DEBUG, "not at verbosity 1")
    assert stderr().splitlines() == [
        "avtool: INFO id=1 verdict=clean",
        "avtool: INFO id=1 verdict=clean",
        "avtool: WARNING id=2 action=defer",
    ]


def test_line_respects_another_handler(stderr: Callable[[], str]) -> None:
    logs.setup(1)
    log = logging.getLogger("avtool")
    other = io.StringIO()
    extra = logging.StreamHandler(other)
    log.addHandler(extra)
    logs.line(log, logging.INFO, "hello")
    assert other.getvalue() == "hello\n" and "hello" in stderr()


def test_verbosity_2_logs_what_1_does(stderr: Callable[[], str]) -> None:
    """No level between INFO and DEBUG that nothing emits: 2 is 1, set up or reloaded."""
    log = logging.getLogger("avtool")
    for apply in (logs.setup, logs.set_verbosity):
        apply(2)
        logs.line(log, logging.INFO, "id=1 verdict=clean")
        logs.line(log, logging.DEBUG, "not at verbosity 2")
        assert stderr().splitlines() == ["avtool: INFO id=1 verdict=clean"]
    assert logs.level_of(2) == logs.level_of(1) == logging.INFO
    assert logs.level_of(3) == logging.DEBUG and logs.level_of(0) == logging.WARNING
    assert logging.getLevelName(15) == "Level 15"  # no DETAIL level registered
