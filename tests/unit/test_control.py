"""Control files: reading envelopes and the drop marks, on files shaped as Courier writes them.

OBSERVED is the dump in docs/notes/courier.md section 3 (Courier 1.0.16, one SMTP message).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avtool.courier.control import (
    ControlError,
    Envelope,
    Recipient,
    clean_note,
    mark_delivered,
    read_envelope,
)

OBSERVED = b"""ssender@example.com
fdns; client.example.com ([::ffff:127.0.0.1])
e
t
M00000000001600E7.000000006B05EA28.00001520
rtestuser@example.test
R
N
ORELAYCLIENT=
OTCPREMOTEIP=::ffff:127.0.0.1
uauthsmtp
E1796154536
p1795578536
W1795564136
"""

THREE = b"""s
fdns; localhost ([127.0.0.1])
M0000000000160100.000000006B05EA30.000015A5
ra@example.test
Rrfc822;A@Example.Test
NF
rb@example.test
R
NSF
rc@example.test
R
N
iavtest
OTCPREMOTEIP=2001:db8::1
uesmtp
"""


def write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_the_observed_control_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c", OBSERVED)
    assert read_envelope([path]) == Envelope(
        sender="sender@example.com",
        recipients=(Recipient("testuser@example.test", "", "", path, 0, False),),
        message_id="00000000001600E7.000000006B05EA28.00001520",
        received_from="dns; client.example.com ([::ffff:127.0.0.1])",
        source="authsmtp",
        auth_user=None,
        relay_client=True,
        remote_ip="127.0.0.1",
    )


def test_three_recipients_auth_user_and_null_sender(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    assert env.sender == ""
    assert env.auth_user == "avtest"
    assert env.relay_client is False
    assert env.remote_ip == "2001:db8::1"
    assert env.source == "esmtp"
    assert [(r.address, r.orcpt, r.notify, r.index) for r in env.recipients] == [
        ("a@example.test", "rfc822;A@Example.Test", "F", 0),
        ("b@example.test", "", "SF", 1),
        ("c@example.test", "", "", 2),
    ]
    assert env.pending == env.recipients


def test_recipients_are_numbered_per_file(tmp_path: Path) -> None:
    first = write(tmp_path, "c1", THREE)
    second = write(tmp_path, "c2", b"s\nrd@example.test\nR\nN\nre@example.test\nR\nN\nS0 1\n")
    env = read_envelope([first, second])
    assert [(r.address, r.file, r.index, r.done) for r in env.recipients] == [
        ("a@example.test", first, 0, False),
        ("b@example.test", first, 1, False),
        ("c@example.test", first, 2, False),
        ("d@example.test", second, 0, True),
        ("e@example.test", second, 1, False),
    ]
    assert env.auth_user == "avtest"  # from the first file that has one
    assert [r.address for r in env.pending] == [
        "a@example.test",
        "b@example.test",
        "c@example.test",
        "e@example.test",
    ]


@pytest.mark.parametrize(
    "tail, done",
    [
        (b"S0 1795564136\n", [True, False, False]),
        (b"F2 1795564136\n", [False, False, True]),
        (b"S1 1\nF2 1\n", [False, True, True]),
        (b"I0 R 250 Ok\n", [False, False, False]),  # info alone is not a delivery
        (b"S7 1\n", [False, False, False]),  # no such recipient: ignored
        (b"S0 17", [True, False, False]),  # cut last line, still a whole record
        (b"S0", [True, False, False]),
        (b"S", [False, False, False]),  # cut inside the record: nothing
        (b"Sx 1\n", [False, False, False]),
    ],
)
def test_done_recipients(tmp_path: Path, tail: bytes, done: list[bool]) -> None:
    env = read_envelope([write(tmp_path, "c", THREE + tail)])
    assert [r.done for r in env.recipients] == done


def test_a_cut_last_recipient_line_is_still_read(tmp_path: Path) -> None:
    env = read_envelope([write(tmp_path, "c", b"sx@y.test\nra@example.test\nR\nN\nrb@exam")])
    assert [r.address for r in env.recipients] == ["a@example.test", "b@exam"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("not an ip", None),
        ("", None),
    ],
)
def test_remote_ip(tmp_path: Path, value: str, expected: str | None) -> None:
    path = write(tmp_path, "c", f"s\nra@b.test\nR\nN\nOTCPREMOTEIP={value}\n".encode())
    assert read_envelope([path]).remote_ip == expected


def test_8bit_values_do_not_break_reading(tmp_path: Path) -> None:
    env = read_envelope(
        [write(tmp_path, "c", "sjosé@example.test\nrü@example.test\nR\nN\n".encode() + b"i\xff\n")]
    )
    assert env.sender == "josé@example.test"
    assert env.recipients[0].address == "ü@example.test"
    assert env.auth_user == "\ufffd"


@pytest.mark.parametrize(
    "content, code, words",
    [
        (b"s\n", 500, "no recipient"),
        (b"", 500, "no recipient"),
        (b"s\nra@b.test\0\nR\nN\n", 500, "NUL"),
        (b"\x89PNG\r\n\x1a\n", 500, "binary junk"),
        (b"s\nra@b.test\n\xffjunk\n", 500, "binary junk"),
        (b"s\nra@b.test\n junk\n", 500, "binary junk"),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, code: int, words: str) -> None:
    with pytest.raises(ControlError, match=words) as info:
        read_envelope([write(tmp_path, "c", content)])
    assert info.value.reply.code == code


def test_missing_and_odd_files(tmp_path: Path) -> None:
    good = write(tmp_path, "c", THREE)
    cases: list[tuple[list[str], int]] = [
        ([str(tmp_path / "missing")], 432),
        ([good, str(tmp_path / "missing")], 432),
        ([str(tmp_path)], 500),  # a directory
        ([], 500),
        ([good, good], 500),
    ]
    (tmp_path / "link").symlink_to(good)
    cases.append(([str(tmp_path / "link")], 500))
    os.mkfifo(tmp_path / "fifo")  # no writer: must neither block nor pass
    cases.append(([str(tmp_path / "fifo")], 500))
    for paths, code in cases:
        with pytest.raises(ControlError) as info:
            read_envelope(paths)
        assert info.value.reply.code == code, paths


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE + b"Ox=" + b"y" * 5000 + b"\n")
    assert read_envelope([path], max_bytes=6000).recipients
    with pytest.raises(ControlError, match="larger than 1000"):
        read_envelope([path], max_bytes=1000)


# --- mark_delivered ------------------------------------------------------------------------


def test_mark_one_of_three(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    mark_delivered(env, [env.recipients[1]], "dropped by avtool: infected: Eicar", 1795564136.9)
    assert Path(path).read_bytes() == THREE + (
        b"I1 R 250 Ok - dropped by avtool: infected: Eicar\nS1 1795564136\n"
    )
    assert [r.done for r in read_envelope([path]).recipients] == [False, True, False]


def test_mark_all_across_files_then_again_is_a_no_op(tmp_path: Path) -> None:
    first = write(tmp_path, "c1", THREE)
    second = write(tmp_path, "c2", b"s\nrd@example.test\nR\nN\nre@example.test\nR\nN\nS0 1\n")
    env = read_envelope([first, second])
    mark_delivered(env, env.recipients, "dropped", 100)
    marks = b"".join(b"I%d R 250 Ok - dropped\nS%d 100\n" % (i, i) for i in range(3))
    assert Path(first).read_bytes() == THREE + marks
    # d (index 0 of c2) was already done: only e is marked
    assert Path(second).read_bytes().endswith(b"S0 1\nI1 R 250 Ok - dropped\nS1 100\n")
    after = read_envelope([first, second])
    assert all(r.done for r in after.recipients) and after.pending == ()
    snapshot = (Path(first).read_bytes(), Path(second).read_bytes())
    mark_delivered(env, env.recipients, "again", 200)  # stale Recipient objects, done on disk
    assert (Path(first).read_bytes(), Path(second).read_bytes()) == snapshot


def test_a_recipient_given_twice_is_marked_once(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    mark_delivered(env, [env.recipients[0], env.recipients[0]], "x", 1)
    assert Path(path).read_bytes().count(b"S0 1\n") == 1


@pytest.mark.parametrize(
    "note, expected",
    [
        ("dropped\r\nS2 0", "dropped S2 0"),
        ("a\nF0 1\n\nI0 x", "a F0 1 I0 x"),
        ("tab\tnul\0del\x7f", "tab nul del"),
        ("virus Ü", "virus"),
        ("x" * 1000, "x" * 400),
    ],
)
def test_notes_are_one_safe_line(note: str, expected: str) -> None:
    assert clean_note(note) == expected


def test_a_note_cannot_inject_records(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    mark_delivered(env, [env.recipients[0]], "x\nS1 5\nS2 5", 7)
    assert [r.done for r in read_envelope([path]).recipients] == [True, False, False]
    assert Path(path).read_bytes().endswith(b"I0 R 250 Ok - x S1 5 S2 5\nS0 7\n")


def test_a_cut_last_line_gets_a_newline_first(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE + b"W17")
    env = read_envelope([path])
    mark_delivered(env, [env.recipients[2]], "dropped", 9)
    assert Path(path).read_bytes() == THREE + b"W17\nI2 R 250 Ok - dropped\nS2 9\n"
    assert read_envelope([path]).recipients[2].done


def test_a_changed_file_is_not_marked(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    Path(path).write_bytes(THREE.replace(b"rb@example.test", b"rother@example.test"))
    before = Path(path).read_bytes()
    with pytest.raises(ControlError, match="changed") as info:
        mark_delivered(env, [env.recipients[1]], "x", 1)
    assert info.value.reply.code == 432
    assert Path(path).read_bytes() == before


def test_recipients_must_come_from_the_envelope(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    with pytest.raises(ValueError):
        mark_delivered(env, [Recipient("a@example.test", "", "", "/etc/passwd", 0, False)], "x", 1)


def test_a_vanished_file_cannot_be_marked(tmp_path: Path) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    os.unlink(path)
    with pytest.raises(ControlError) as info:
        mark_delivered(env, env.recipients, "x", 1)
    assert info.value.reply.code == 432
    assert not Path(path).exists()  # not created either


@pytest.mark.parametrize("failure", ["short", "enospc", "fsync"])
def test_a_failed_write_leaves_no_half_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = write(tmp_path, "c", THREE)
    env = read_envelope([path])
    real_write = os.write

    def write_(fd: int, data: bytes) -> int:
        if failure == "short":
            return real_write(fd, data[: len(data) // 2])
        if failure == "enospc":
            real_write(fd, data[:5])  # some file systems write part, then fail
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "write", write_)
    if failure == "fsync":
        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ControlError) as info:
        mark_delivered(env, env.recipients, "dropped", 1)
    assert info.value.reply.code == 432
    monkeypatch.undo()
    assert Path(path).read_bytes() == THREE
    assert read_envelope([path]).pending == env.recipients


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_any_bytes_give_an_envelope_or_a_control_error(tmp_path: Path, raw: bytes) -> None:
    path = write(tmp_path, "fuzz", raw)
    try:
        env = read_envelope([path])
    except ControlError as e:
        assert e.reply.code in (432, 500)
        return
    assert env.recipients
    assert all(r.file == path for r in env.recipients)
    assert [r.index for r in env.recipients] == list(range(len(env.recipients)))


addresses = st.from_regex(r"[a-z0-9.]{1,12}@[a-z]{1,8}\.test", fullmatch=True)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.lists(addresses, min_size=1, max_size=5), min_size=1, max_size=3),
    st.data(),
)
def test_marked_recipients_read_back_as_done(
    tmp_path: Path, files: list[list[str]], data: st.DataObject
) -> None:
    paths = []
    for i, addrs in enumerate(files):
        body = b"ssender@x.test\n" + b"".join(f"r{a}\nR\nN\n".encode() for a in addrs)
        paths.append(write(tmp_path, f"ctl{i}", body))
    env = read_envelope(paths)
    first = data.draw(st.sets(st.sampled_from(env.recipients)))
    second = data.draw(st.sets(st.sampled_from(env.recipients)))
    mark_delivered(env, first, "one", 1)
    mark_delivered(env, second, "two", 2)
    after = read_envelope(paths)
    assert [r.done for r in after.recipients] == [r in first | second for r in env.recipients]
    for path in paths:  # one S record per recipient at most
        lines = Path(path).read_bytes().splitlines()
        s_records = [line.split()[0] for line in lines if line.startswith(b"S")]
        assert len(s_records) == len(set(s_records))


# Lines of a control file as Courier could have left it: any record letter, any value (8-bit,
# CR, spaces), recipients among them, earlier I/S/F records, and perhaps a cut last line.
_values = st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\0" not in b)
_record = st.tuples(st.sampled_from(list(b"sfMuieOtWEpINRSFAZ09")), _values).map(
    lambda kv: bytes([kv[0]]) + kv[1]
)
_recipient = _values.map(lambda v: b"r" + v + b"\nR\nN")
_DROP_MARKS = re.compile(rb"(?:I(\d+) R 250 Ok - [\x20-\x7e]*\nS(\d+) (\d+)\n)*")


@st.composite
def control_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_record | _recipient, max_size=12))
    lines.insert(draw(st.integers(0, len(lines))), draw(_recipient))  # at least one
    raw = b"\n".join(lines)
    return raw if draw(st.booleans()) else raw + b"\n"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(control_files(), st.text(max_size=60), st.floats(0, 2**33), st.data())
def test_drop_marks_on_any_file_stay_valid_records(
    tmp_path: Path, raw: bytes, note: str, now: float, data: st.DataObject
) -> None:
    """Whatever the file held before and whatever the note says: the file gains only whole
    ``I<n> R 250 Ok - <printable note>`` / ``S<n> <time>`` pairs (after a newline if its last
    line was cut), read back by the reader as exactly the marked recipients done; nothing
    before is changed, no other recipient and no other record is touched."""
    path = write(tmp_path, "ctl", raw)
    try:
        before = read_envelope([path])
    except ControlError as e:
        assert e.reply.code == 500  # e.g. an r value that made a line look like binary junk
        return
    chosen = data.draw(st.sets(st.sampled_from(before.recipients)))
    mark_delivered(before, chosen, note, now)
    after_raw = Path(path).read_bytes()
    assert after_raw.startswith(raw)
    added = after_raw[len(raw) :]
    if added and not raw.endswith(b"\n") and raw:
        assert added.startswith(b"\n")
        added = added[1:]
    m = _DROP_MARKS.fullmatch(added)
    assert m is not None, added
    pairs = re.findall(rb"I(\d+) R 250 Ok - [^\n]*\nS(\d+) (\d+)\n", added)
    assert all(i == s and int(t) == int(now) for i, s, t in pairs)
    newly = {int(i) for i, _, _ in pairs}
    assert newly == {r.index for r in chosen if not r.done}
    after = read_envelope([path])
    assert [r.address for r in after.recipients] == [r.address for r in before.recipients]
    assert [r.done for r in after.recipients] == [r.done or r in chosen for r in before.recipients]
    assert (after.sender, after.message_id, after.auth_user, after.source) == (
        before.sender,
        before.message_id,
        before.auth_user,
        before.source,
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.text(max_size=20))
def test_marking_any_readable_file_raises_nothing_and_reads_back_done(
    tmp_path: Path, raw: bytes, note: str
) -> None:
    path = write(tmp_path, "anyfile", raw)
    try:
        env = read_envelope([path])
    except ControlError:
        return
    mark_delivered(env, env.recipients, note, 1795564136.0)
    assert read_envelope([path]).pending == ()
