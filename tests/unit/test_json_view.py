"""``scan --json`` and ``rescan --json`` write their lines in batches (avtool/cli/scan.py
JsonView): every line, in order, and few system calls however stdout is buffered."""

from __future__ import annotations

import io
import json
import sys

import pytest

from avtool.cli.scan import JsonView, clean_maildir_line, message_object
from avtool.engine import Clean, Infected
from avtool.scan.mailbox import Message, Problem
from avtool.scan.scanner import Summary
from avtool.scan.worker import Result


class Counted(io.StringIO):
    """stdout as PYTHONUNBUFFERED leaves it: each write reaches the file."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _result(n: int) -> Result:
    m = Message("/m", "maildir", f"k{n}", f"/m/cur/k{n}", 10, subdir="cur")
    return Result(m, Infected(("Eicar",)) if n == 7 else Clean())


def test_every_line_in_order_in_few_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Counted()
    monkeypatch.setattr(sys, "stdout", out)
    with JsonView() as view:
        for n in range(1000):
            view.result(_result(n))
        view.problem(Problem("/m/x", "cannot list: denied"))
        view.finish(Summary(), moving=False)
    objects = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [o.get("key") for o in objects[:1000]] == [f"k{n}" for n in range(1000)]
    assert objects[7]["names"] == ["Eicar"]
    assert [o["type"] for o in objects[1000:]] == ["error", "summary"]
    assert out.writes <= 8  # a write per message was 1002


def test_a_slow_scan_still_shows_its_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once FLUSH_SECONDS have passed since the last write, a line goes out at once."""
    out = Counted()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(JsonView, "FLUSH_SECONDS", 0.0)
    view = JsonView()
    view.result(_result(1))
    assert json.loads(out.getvalue())["key"] == "k1"


def test_lines_are_out_when_the_scan_is_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Counted()
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(KeyboardInterrupt), JsonView() as view:
        view.result(_result(1))
        raise KeyboardInterrupt
    assert json.loads(out.getvalue())["key"] == "k1"


@pytest.mark.parametrize(
    ("mailbox", "name", "info"),
    [
        ("/home/bob/Maildir", "1700000000.M1P1.host", "2,FS"),
        ('/home/a"b\\c/Maildir', "k\ttab\nnewline", ""),
        ("/home/zoë/Maildir", "ünïcode", "2,"),
        ("/home/x/Maildir", "undecodable-\udcff", "1,experimental"),
        ("/home/x/Maildir", "\x00\x1f\x7f", "2,S"),
    ],
)
def test_the_quick_line_is_json_dumps(mailbox: str, name: str, info: str) -> None:
    """The clean Maildir line made without a dict reads exactly as json.dumps writes it."""
    m = Message(mailbox, "maildir", name, f"{mailbox}/cur/{name}", 12345, subdir="cur", info=info)
    result = Result(m, Clean("/run/clamd.sock"))
    assert clean_maildir_line(result) == json.dumps(message_object(result))
    for other in (
        Result(m, Infected(("Eicar",))),
        Result(m, Clean(), sender="a@b"),
        Result(m, Clean(), subject=""),
        Result(Message(mailbox, "mbox", "1", mailbox, 10), Clean()),
    ):
        assert clean_maildir_line(other) is None  # the dict's way: other keys
