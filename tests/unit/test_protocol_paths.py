"""check_paths and open_data on a real directory tree: shapes, file types, races."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from avtool.courier import spool as spool_module
from avtool.courier.protocol import ProtocolError, Request
from avtool.courier.spool import check_paths, open_data


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool like /var/lib/courier/tmp: <spool>/179554/{D1442023, 1795549736.5408.vm}."""
    root = tmp_path / "tmp"
    (root / "179554").mkdir(parents=True)
    (root / "179554" / "D1442023").write_bytes(b"Subject: x\n\nbody\n")
    (root / "179554" / "1795549736.5408.vm").write_bytes(b"s\nrx@example.test\nR\nN\n")
    return root


def req(spool: Path, data: str = "179554/D1442023", *controls: str) -> Request:
    names = controls or ("179554/1795549736.5408.vm",)
    return Request(f"{spool}/{data}", tuple(f"{spool}/{c}" for c in names))


def code_of(request: Request, spool_dir: str) -> int:
    with pytest.raises(ProtocolError) as info:
        check_paths(request, spool_dir)
    return info.value.reply.code


def test_a_courier_request_passes(spool: Path) -> None:
    check_paths(req(spool), str(spool))
    check_paths(req(spool), str(spool) + "/")  # the setting may end in a slash


@pytest.mark.parametrize(
    "data, code",
    [
        ("179554/../179554/D1442023", 500),
        ("179554/./D1442023", 500),
        ("179554//D1442023", 500),
        ("179554/D1442023/", 500),
        ("./179554/D1442023", 500),
    ],
)
def test_paths_must_be_normalised(spool: Path, data: str, code: int) -> None:
    assert code_of(req(spool, data), str(spool)) == code


def test_leading_double_slash_is_refused(spool: Path) -> None:
    r = req(spool)
    assert code_of(Request("/" + r.data_path, r.control_paths), str(spool)) == 500


def test_relative_paths_are_deferred(spool: Path) -> None:
    # courierfilter(8) allows paths relative to /usr; refusing them for good would bounce mail
    r = req(spool)
    assert code_of(Request("tmp/179554/D1442023", r.control_paths), str(spool)) == 432


def test_paths_outside_the_spool_are_deferred(spool: Path, tmp_path: Path) -> None:
    other = tmp_path / "tmp2"  # shares the spool's name as a prefix
    other.mkdir()
    (other / "D1").write_bytes(b"x")
    r = req(spool)
    assert code_of(Request(str(other / "D1"), r.control_paths), str(spool)) == 432
    assert code_of(Request(r.data_path, ("/etc/passwd",)), str(spool)) == 432
    assert code_of(r, str(spool / "179554" / "D1442023")) == 432  # spool set to a file


def test_the_same_file_twice_is_refused(spool: Path) -> None:
    r = req(spool)
    assert code_of(Request(r.data_path, (r.data_path,)), str(spool)) == 500
    assert code_of(Request(r.data_path, r.control_paths * 2), str(spool)) == 500


def test_a_vanished_file_is_deferred(spool: Path) -> None:
    assert code_of(req(spool, "179554/D999"), str(spool)) == 432
    assert code_of(req(spool, "179999/D1"), str(spool)) == 432
    # a file where a directory should be is a shape Courier never sends
    assert code_of(req(spool, "179554/D1442023/x"), str(spool)) == 500


def test_a_symlinked_file_is_refused(spool: Path) -> None:
    (spool / "179554" / "Dlink").symlink_to(spool / "179554" / "D1442023")
    assert code_of(req(spool, "179554/Dlink"), str(spool)) == 500
    (spool / "179554" / "Cdangling").symlink_to("/nonexistent")
    assert code_of(req(spool, "179554/D1442023", "179554/Cdangling"), str(spool)) == 500


def test_a_symlinked_directory_is_refused(spool: Path) -> None:
    (spool / "777").symlink_to(spool / "179554")
    r = req(spool, "777/D1442023")
    with pytest.raises(ProtocolError, match="directory in the path"):
        check_paths(r, str(spool))


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket"])
def test_special_files_are_refused(spool: Path, kind: str) -> None:
    target = spool / "179554" / "Dx"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(target))
        except OSError as e:  # a long tmp path
            pytest.skip(f"cannot bind a unix socket here: {e}")
        sock.close()
    with pytest.raises(ProtocolError, match=kind) as info:
        check_paths(req(spool, "179554/Dx"), str(spool))
    assert info.value.reply.code == 500
    with pytest.raises(ProtocolError, match=kind):
        os.close(open_data(str(target)))


def test_a_device_is_refused_without_opening_it(spool: Path) -> None:
    target = spool / "179554" / "Ddev"
    try:
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
    except PermissionError:
        pytest.skip("no CAP_MKNOD")
    with pytest.raises(ProtocolError, match="character device"):
        check_paths(req(spool, "179554/Ddev"), str(spool))
    with pytest.raises(ProtocolError, match="character device"):
        open_data(str(target))


def test_open_data_gives_a_readable_blocking_descriptor(spool: Path) -> None:
    fd = open_data(str(spool / "179554" / "D1442023"))
    try:
        assert os.read(fd, 100) == b"Subject: x\n\nbody\n"
        assert os.get_blocking(fd)
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_open_data_refuses_symlinks_and_defers_missing(spool: Path) -> None:
    link = spool / "179554" / "Dlink"
    link.symlink_to(spool / "179554" / "D1442023")
    with pytest.raises(ProtocolError) as info:
        open_data(str(link))
    assert info.value.reply.code == 500
    with pytest.raises(ProtocolError) as info:
        open_data(str(spool / "179554" / "D0"))
    assert info.value.reply.code == 432


def _regular_lstat(monkeypatch: pytest.MonkeyPatch, spool: Path) -> None:
    """Make the lstat check see a regular file, as if the path changed right after it."""
    regular = os.lstat(spool / "179554" / "D1442023")
    monkeypatch.setattr(spool_module, "_lstat", lambda *args: regular)


def test_a_symlink_swapped_in_after_lstat_fails_on_open(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = spool / "179554" / "Dlink"
    link.symlink_to(spool / "179554" / "D1442023")
    _regular_lstat(monkeypatch, spool)
    with pytest.raises(ProtocolError, match="symlink") as info:
        open_data(str(link))  # O_NOFOLLOW: ELOOP
    assert info.value.reply.code == 500


def test_a_fifo_swapped_in_after_lstat_neither_blocks_nor_passes(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = spool / "179554" / "Dfifo"
    os.mkfifo(fifo)  # no writer: a blocking open would hang this test
    _regular_lstat(monkeypatch, spool)
    with pytest.raises(ProtocolError, match="fifo") as info:
        open_data(str(fifo))
    assert info.value.reply.code == 500


def test_an_unreadable_file_is_deferred(spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ProtocolError, match="Permission denied") as info:
        open_data(str(spool / "179554" / "D1442023"))
    assert info.value.reply.code == 432


def test_spool_dir_must_be_absolute(spool: Path) -> None:
    with pytest.raises(ValueError):
        check_paths(req(spool), "var/lib/courier/tmp")


# --- properties: any request over a tree with every kind of trap ---------------------------


@pytest.fixture(scope="module")
def trap_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A spool holding regular files, a subdir, symlinks to inside and outside, a symlinked
    dir, a fifo; and a dir outside it. Built once: the properties only read it."""
    base = tmp_path_factory.mktemp("traps")
    spool, outside = base / "tmp", base / "outside"
    (spool / "d").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret\n")
    for name in ("D1", "C1", "d/D2", "d/C2"):
        (spool / name).write_bytes(b"s\nrx@example.test\nR\nN\n")
    (spool / "in-link").symlink_to(spool / "D1")
    (spool / "out-link").symlink_to(outside / "secret")
    (spool / "dir-link").symlink_to(outside)
    (spool / "d" / "up-link").symlink_to("../../outside/secret")
    os.mkfifo(spool / "fifo")
    return spool, outside


SEGMENTS = st.sampled_from(
    ["D1", "C1", "d", "D2", "C2", "in-link", "out-link", "dir-link", "up-link", "fifo",
     "secret", "outside", "tmp", "..", ".", "", "nope", "x" * 300, "é", " "]
)  # fmt: skip


@st.composite
def trap_paths(draw: st.DrawFn, spool: str) -> str:
    if draw(st.booleans()):
        return spool + "/" + draw(st.sampled_from(["D1", "C1", "d/D2", "d/C2"]))
    parts = draw(st.lists(SEGMENTS, min_size=1, max_size=5))
    prefix = draw(st.sampled_from([spool + "/", spool + "//", spool + "/../", "/", "", spool]))
    return prefix + "/".join(parts)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_no_path_escapes_the_checks(trap_tree: tuple[Path, Path], data: st.DataObject) -> None:
    """Whatever the request names, only ProtocolError (432 or 5xx) escapes check_paths and
    open_data; what passes is a regular file whose real path is in the spool, reached through
    real directories only, and open_data gives a descriptor of that very file."""
    spool, _ = trap_tree
    paths = data.draw(st.lists(trap_paths(str(spool)), min_size=2, max_size=4))
    request = Request(paths[0], tuple(paths[1:]))
    try:
        check_paths(request, str(spool))
    except ProtocolError as e:
        assert e.reply.code in (432, 500)
        event(f"refused {e.reply.code}")
        return
    event("passed")
    for path in paths:
        real = os.path.realpath(path)
        assert real == path and real.startswith(f"{spool}/"), path
        assert stat.S_ISREG(os.lstat(path).st_mode)
    try:
        fd = open_data(request.data_path)
    except ProtocolError as e:  # pragma: no cover - the tree does not change
        raise AssertionError(f"passed the checks, then failed to open: {e}") from e
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(request.data_path))
    finally:
        os.close(fd)
