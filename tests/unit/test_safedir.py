"""safedir: a path opened one directory at a time, following a link only where no other user
could have made it; the private walk of the ``--move-to`` target. (The attacks on a real scan
are in tests/integration/test_move_attacks.py.)"""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from avtool.control.pidfile import unsafe_dir
from avtool.safedir import Unsafe, open_dir, open_parent, others_can_write
from tests.support.clamd_harness import REPO
from tests.support.dirs import public_dir

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    """A dir of ours below /tmp (0755), to set modes and owners in."""
    with public_dir("avsd") as path:
        yield path


def nobody(path: Path) -> Path:
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1, follow_symlinks=False)
    return path


def ident(fd: int) -> tuple[int, int]:
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def same(fd: int, path: Path) -> bool:
    st = path.stat()
    return ident(fd) == (st.st_dev, st.st_ino)


def test_plain_path_and_dotdot(base: Path) -> None:
    (base / "a" / "b").mkdir(parents=True)
    assert same(open_dir(str(base / "a" / "b")), base / "a" / "b")
    assert same(open_dir(f"{base}/a/./b/../b"), base / "a" / "b")
    assert same(open_dir("/"), Path("/"))


def test_a_link_in_a_dir_only_we_write_is_followed(base: Path) -> None:
    (base / "real" / "sub").mkdir(parents=True)
    (base / "abs").symlink_to(base / "real")
    (base / "rel").symlink_to("real/sub/..")  # .. of the real dir the link leads to
    assert same(open_dir(str(base / "abs" / "sub")), base / "real" / "sub")
    assert same(open_dir(str(base / "rel" / "sub")), base / "real" / "sub")
    fd, name = open_parent(str(base / "abs" / "sub" / "file"))
    assert same(fd, base / "real" / "sub") and name == "file"


def test_a_final_link_is_resolved_by_open_parent(base: Path) -> None:
    (base / "d").mkdir()
    (base / "link").symlink_to("d/mbox")
    fd, name = open_parent(str(base / "link"))
    assert same(fd, base / "d") and name == "mbox"


@pytest.mark.parametrize("owner", ["world", pytest.param("nobody", marks=as_root)])
def test_a_link_in_a_dir_another_user_can_write_is_refused(base: Path, owner: str) -> None:
    home = base / "home"
    (home / "real").mkdir(parents=True)
    (home / "cur").symlink_to(home / "real")
    (home / "mbox").symlink_to(home / "real" / "x")
    if owner == "world":
        home.chmod(0o777)
        why = f"{home} is writable by every user (mode 0777)"
    else:
        nobody(home)
        why = f"{home} belongs to another user (uid {pwd.getpwnam('nobody').pw_uid})"
    with pytest.raises(Unsafe) as caught:
        open_dir(str(home / "cur"))
    assert str(caught.value) == f"{home / 'cur'} is a symbolic link, and {why}"
    with pytest.raises(Unsafe, match="is a symbolic link"):
        open_parent(str(home / "mbox"))
    assert same(open_dir(str(home / "real")), home / "real")  # no link: fine


def test_a_loop_of_links_ends(base: Path) -> None:
    (base / "a").symlink_to("b")
    (base / "b").symlink_to("a")
    with pytest.raises(OSError) as caught:
        open_dir(str(base / "a"))
    assert caught.value.errno == errno.ELOOP


def test_private_create_makes_0700_dirs(base: Path) -> None:
    fd = open_dir(str(base / "x" / "y"), private=True, create=True)
    assert same(fd, base / "x" / "y")
    assert oct((base / "x").stat().st_mode & 0o777) == "0o700"


def test_private_sticky_dir_on_the_way_but_not_as_the_parent(base: Path) -> None:
    """/tmp/ours/q is fine (nobody else can replace ours in sticky /tmp); /tmp/q is not."""
    sticky = base / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "ours").mkdir()
    assert same(
        open_dir(str(sticky / "ours" / "q"), private=True, create=True), sticky / "ours" / "q"
    )
    with pytest.raises(Unsafe, match=f"another user could replace {sticky / 'q'}: {sticky} is wri"):
        open_dir(str(sticky / "q"), private=True, create=True)
    assert not (sticky / "q").exists()  # nothing made there
    (sticky / "q").mkdir()  # ours, and yet in a dir that others can write: the pid file's rule
    with pytest.raises(Unsafe, match=f"another user could replace {sticky / 'q'}: {sticky} is wri"):
        open_dir(str(sticky / "q"), private=True)


@as_root
def test_private_refuses_a_dir_of_another_user_on_the_way(base: Path) -> None:
    (base / "theirs" / "ours").mkdir(parents=True)
    nobody(base / "theirs")
    with pytest.raises(Unsafe, match="another user could replace .*/theirs/ours"):
        open_dir(str(base / "theirs" / "ours" / "q"), private=True, create=True)
    assert not (base / "theirs" / "ours" / "q").exists()
    assert same(open_dir(str(base / "theirs" / "ours")), base / "theirs" / "ours")  # reading


def test_the_pid_file_and_the_target_share_the_rule(base: Path) -> None:
    base.chmod(0o777)
    expected = f"{base} is writable by every user (mode 0777)"
    assert others_can_write(base.stat(), str(base)) == expected
    assert unsafe_dir(base / "avtool.pid") == expected


@as_root
def test_a_dir_we_may_only_search_is_walked_through(base: Path) -> None:
    """O_PATH on the way: a user reads a file below a dir they may search but not list
    (0711), as path resolution lets them (path_resolution(7))."""
    (base / "home").mkdir(mode=0o711)
    (base / "home").chmod(0o711)
    (base / "home" / "x.eml").write_text("Subject: hi\n\nhello\n")
    (base / "home" / "x.eml").chmod(0o644)
    code = (
        "import os, sys; from avtool.safedir import open_file; "
        "print(os.read(open_file(sys.argv[1]), 11))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(base / "home" / "x.eml")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        user="nobody",
        check=False,
    )
    assert proc.stdout == "b'Subject: hi'\n", proc.stderr
