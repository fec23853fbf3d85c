"""``avtool scan`` as an admin meets it: lines, summary, JSON, exit codes, bad input one line
each, and a progress bar on a terminal only. Through typer's CliRunner and a real process."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from avtool.cli.app import app, main
from tests.integration.test_scan import Boxes, build
from tests.support.clamd_harness import REPO, ClamdServer
from tests.support.mailboxes import (
    EICAR,
    FROM_LINE,
    attached_testfiles,
    maildir_of,
    mbox_bytes,
    plain,
    snapshot,
    with_attachment,
)

pytestmark = pytest.mark.clamd
runner = CliRunner()
BAR = ("━", "\r", "\x1b[")  # what a rich progress bar writes: bar glyphs, returns, escapes


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich cuts long error lines to the terminal width (tests/conftest.py isolates the config)."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture
def sock(clamd_server: ClamdServer) -> str:
    return f"clamd.backends={clamd_server.unix_socket}"


@pytest.fixture
def boxes(tmp_path: Path) -> Boxes:
    return build(tmp_path / "mail")


def scan(sock: str, *args: str, stdin: bytes | None = None) -> Result:
    return runner.invoke(app, ["scan", "--set", sock, *args], input=stdin)


def scan_process(
    sock: str, *args: str, env: dict[str, str], user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m avtool scan --set SOCK ARGS...`` as a real process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "avtool", "scan", "--set", sock, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
        user=user,
        check=False,
    )


def no_bar_no_traceback(text: str) -> None:
    assert "Traceback" not in text
    assert not any(mark in text for mark in BAR), repr(text[:300])


def test_text_lines_and_summary(sock: str, boxes: Boxes) -> None:
    result = scan(sock, *boxes.paths)
    assert result.exit_code == 1, result.output
    out: str = result.stdout
    no_bar_no_traceback(result.output)
    lines = [line for line in out.splitlines() if line.startswith("INFECTED")]
    assert len(lines) == 15
    mbox = str(boxes.root / "mbox")
    [qp] = [line for line in lines if line.startswith(f"INFECTED  {mbox} [2] ")]
    assert "Eicar-Test-Signature" in qp
    assert qp.endswith("  From: Alice <alice@example.com>  Subject: qp virus")
    md_keys = {
        k for (box, k), s in boxes.expected.items() if box.endswith("Maildir") and s.infected
    }
    assert {line.split("[")[1].split("]")[0] for line in lines if "/Maildir [" in line} == md_keys
    assert "CLEAN" not in out  # clean messages have no line
    rows = dict(line.strip("│ ").split(None, 1) for line in out.splitlines() if "│" in line)
    assert rows["scanned"].strip("│ ") == "27" and rows["infected"].strip("│ ") == "15"
    assert rows["clean"].strip("│ ") == "12" and rows["errors"].strip("│ ") == "0"
    assert result.stderr == ""


def test_all_clean_exits_0_and_quiet_prints_nothing(sock: str, tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(plain("fine"))
    result = scan(sock, str(tmp_path / "a.eml"))
    assert result.exit_code == 0 and "scanned" in result.stdout
    quiet = scan(sock, "-q", str(tmp_path / "a.eml"))
    assert quiet.exit_code == 0 and quiet.output == ""


def test_json_lines(sock: str, boxes: Boxes) -> None:
    result = scan(sock, "--json", "--explain", *boxes.paths)
    assert result.exit_code == 1
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    messages = [o for o in objects if o["type"] == "message"]
    assert len(messages) == 27 and objects[-1]["type"] == "summary"
    assert {(o["mailbox"], o["key"]) for o in messages if o["status"] == "infected"} == (
        boxes.infected()
    )
    summary = objects[-1]
    assert (summary["scanned"], summary["infected"], summary["clean"]) == (27, 15, 12)
    assert summary["exit"] == 1 and summary["errors"] == 0
    uu = next(o for o in messages if o["format"] == "mh" and o["key"] == "3")
    assert uu["names"][0].startswith("ClamAV-Test-File")
    assert uu["subject"] == "uu virus" and uu["from"] == "Alice <alice@example.com>"
    assert uu["parts"] == [
        {
            "part": "1",
            "content_type": "text/plain",
            "filename": "clam.exe",
            "encoding": "uuencoded",
            "names": uu["names"],
        }
    ]
    flagged = next(o for o in messages if o["format"] == "maildir" and o["flags"] == "FS")
    assert flagged["subdir"] == "cur"
    assert all("offset" in o for o in messages if o["format"] == "mbox")


def test_explain_lines(sock: str, boxes: Boxes) -> None:
    result = scan(sock, "--explain", str(boxes.root / "mbox"))
    out = result.stdout
    assert '          part 2.2 application/octet-stream "eicar.com": Eicar-Test-Signature' in out
    assert "          part 2 text/plain: Eicar-Test-Signature" in out  # quoted-printable
    assert '          part 1 text/plain "clam.exe" (uuencoded): ClamAV-Test-File' in out
    assert '          part 2 application/octet-stream "files.zip": Eicar-Test-Signature' in out


def test_bad_inputs_one_line_each_scan_goes_on_exit_2(sock: str, tmp_path: Path) -> None:
    good = tmp_path / "Maildir"
    maildir_of(good, [attached_testfiles()[0]])
    truncated = tmp_path / "truncated.mbox"
    infected_tail = with_attachment("cut", "eicar.com", EICAR)
    truncated.write_bytes(mbox_bytes([plain("ok")]) + FROM_LINE + infected_tail[:-3])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64) + b"\0")
    empty_md = tmp_path / "Empty"
    for sub in ("cur", "new", "tmp"):
        (empty_md / sub).mkdir(parents=True)
    missing = tmp_path / "missing"
    result = scan(sock, str(missing), str(truncated), str(junk), str(empty_md), str(good))
    assert result.exit_code == 2  # errors win over infected
    err: str = result.stderr
    assert err.splitlines() == [
        f"avtool: error: {missing}: no such file or directory",
        f"avtool: error: {truncated}: truncated: message 2 ends in the middle of a line",
        f"avtool: error: {junk}: not a mail message or mailbox (unrecognised or binary data);"
        " skipped",
        f"avtool: error: {empty_md}: empty Maildir: no message in new/ or cur/",
    ]
    out: str = result.stdout
    assert f"INFECTED  {truncated} [2]" in out  # the cut message was still scanned
    assert f"INFECTED  {good} [" in out  # and the scan went on after the bad ones
    no_bar_no_traceback(result.output)


def test_stdin(sock: str) -> None:
    result = scan(sock, "-", stdin=with_attachment("from a pipe", "e.com", EICAR))
    assert result.exit_code == 1
    assert result.stdout.startswith("INFECTED  - ")
    assert "Subject: from a pipe" in result.stdout
    box = mbox_bytes([plain("a"), with_attachment("b", "e.com", EICAR)])
    result = scan(sock, "--json", "-", stdin=box)
    [infected] = [
        json.loads(line)
        for line in result.stdout.splitlines()
        if '"infected"' in line and '"message"' in line
    ]
    assert (infected["mailbox"], infected["key"], infected["format"]) == ("-", "2", "mbox")


def test_move_to_from_the_command_line(sock: str, boxes: Boxes, tmp_path: Path) -> None:
    q = tmp_path / "q"
    result = scan(sock, "--move-to", str(q), *boxes.paths)
    assert result.exit_code == 1, result.output
    moved = [line for line in result.stdout.splitlines() if line.startswith("MOVED")]
    assert len(moved) == 15 and all(" -> " + str(q) in line for line in moved)
    assert len(snapshot(q)) == 15
    row = next(line for line in result.stdout.splitlines() if "moved" in line and "│" in line)
    assert row.split("│")[2].strip() == "15"
    assert scan(sock, *boxes.paths).exit_code == 0


def test_move_to_a_file_is_a_usage_error(sock: str, boxes: Boxes, tmp_path: Path) -> None:
    (tmp_path / "q").write_text("")
    result = scan(sock, "--move-to", str(tmp_path / "q"), *boxes.paths)
    assert result.exit_code == 2 and "is a file" in result.output


def test_no_clamd_one_line_exit_2(boxes: Boxes, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["scan", "--set", "clamd.backends=/nonexistent/c.sock", *boxes.paths])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("avtool: cannot scan: no clamd answers: /nonexistent/c.sock")
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err
    assert captured.out == ""


# ---- real processes ------------------------------------------------------------------------------
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AVTOOL_")}
    return base | {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "none")}


def test_real_process_on_a_pipe_has_no_progress_bar(
    sock: str, boxes: Boxes, tmp_path: Path
) -> None:
    proc = scan_process(sock, *boxes.paths, str(tmp_path / "nope"), env=env(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout.count("INFECTED") == 15 and "scanned" in proc.stdout
    assert proc.stderr == f"avtool: error: {tmp_path / 'nope'}: no such file or directory\n"
    no_bar_no_traceback(proc.stdout + proc.stderr)


def test_real_process_on_a_terminal_shows_progress(sock: str, tmp_path: Path) -> None:
    maildir_of(tmp_path / "Maildir", attached_testfiles())
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "avtool", "scan", "--set", sock, str(tmp_path / "Maildir")],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env(tmp_path) | {"COLUMNS": "160", "TERM": "xterm"},
        cwd=REPO,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        seen += data
    proc.wait(10)
    os.close(master)
    text = seen.decode("utf-8", "replace")
    assert proc.returncode == 1
    assert "messages" in text and "msg/s" in text  # the bar's own columns
    assert "━" in text or "\x1b[" in text
    assert text.count("INFECTED") == 43 and "Traceback" not in text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_unreadable_files_as_an_unprivileged_user(sock: str) -> None:
    """As nobody: a named file and a Maildir message that only root may read."""
    work = Path(tempfile.mkdtemp(prefix="avu", dir="/tmp"))
    try:
        work.chmod(0o755)
        secret = work / "secret.eml"
        secret.write_bytes(plain("private"))
        secret.chmod(0o600)
        md = work / "Maildir"
        maildir_of(md, [attached_testfiles()[0]])
        for path in md.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o600)
        md.chmod(0o755)
        readable = work / "ok.eml"
        readable.write_bytes(with_attachment("v", "e.com", EICAR))
        readable.chmod(0o644)
        proc = scan_process(
            sock,
            str(secret),
            str(md),
            str(readable),
            env=env(work) | {"HOME": str(work)},
            user="nobody",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"avtool: error: {secret}: cannot read: permission denied\n"
    assert f"FAILED    {md} [" in proc.stdout and "cannot open: permission denied" in proc.stdout
    assert f"INFECTED  {readable}  " in proc.stdout
    no_bar_no_traceback(proc.stdout + proc.stderr)


def test_stdin_through_a_real_pipe(sock: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "avtool", "scan", "--json", "--set", sock, "-"],
        input=with_attachment("piped", "e.com", EICAR),
        capture_output=True,
        timeout=60,
        env=env(tmp_path),
        cwd=REPO,
    )
    assert proc.returncode == 1
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["type"] for o in objects] == ["message", "summary"]
    assert objects[0]["status"] == "infected" and objects[0]["subject"] == "piped"
