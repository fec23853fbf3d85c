"""Directories root acts in, and who else can change them: one rule for the pid file, the ``sig``
answers pipe, ``avtool scan --move-to`` and the mailboxes it moves messages out of.

A user who can write a directory can put a file, link or fifo of their own under any name in
it, and rename or replace any subdirectory, between our check and our use. So:

- Where we create names (``others_can_write``): a directory that is not world-writable and
  belongs to root or to us. Group-writable is the admin's choice (Debian's /run/courier is
  root:courier 0775, /var/mail root:mail 2775).
- A path is opened one component at a time, openat(2) with ``O_NOFOLLOW|O_DIRECTORY``
  (``open_dir``, ``open_parent``). A symbolic link is followed only when the directory that
  holds it passes the rule above: then only root, we or the admin's group could have made it
  (path_resolution(7) follows any link, whoever put it there). The descriptor is then used for
  every open, rename, link and unlink (``dir_fd=``): swapping a directory on the path for a link
  after it was opened changes nothing for us.
- ``private`` (the ``--move-to`` target): besides, no other user may replace any directory on
  the way (its parent passes the rule, or is sticky and the directory is root's or ours, as
  /tmp/x), nor write the last one or its parent (the pid file's rule).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# On the way, directories are opened O_PATH: search permission is all a path needs
# (path_resolution(7)); the one returned is opened for reading if it can be (fsync, listing).
_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The no-follow flag sets, defined once: a file opened to be read (no symlink as its last
# component, no blocking on a fifo swapped in, never a controlling terminal), and a file created
# (never through a link, never an existing one).
READ_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
CREATE_NOFOLLOW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = READ_NOFOLLOW
MAX_LINKS = 40  # path_resolution(7): Linux follows at most 40 links in one path


class Unsafe(Exception):
    """Acting on this path would follow a name that another user controls."""


def others_can_write(st: os.stat_result, where: str, trusted: tuple[int, ...] = ()) -> str | None:
    """Why the directory ``where`` (``st``: its stat) lets others put names in it, or None.

    ``trusted``: owners to accept besides root and us (``sig`` accepts the daemon's user)."""
    if st.st_mode & stat.S_IWOTH:
        return f"{where} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_uid not in (0, os.geteuid(), *trusted):
        return f"{where} belongs to another user (uid {st.st_uid})"
    return None


def open_dir(path: str, *, private: bool = False, create: bool = False) -> int:
    """A descriptor of the directory ``path``, opened without following a name that another
    user controls (module docstring). ``create``: missing directories are made, mode 0700.
    Unsafe when that cannot be done; OSError when a directory is missing or unreadable."""
    fd, _ = _walk(path, last=False, private=private, create=create)
    return fd


def open_parent(path: str) -> tuple[int, str]:
    """(descriptor of the directory holding the file ``path``, the file's name in it). A
    symbolic link as the last component is followed under the same rule; the name returned
    is then that of the file it names."""
    return _walk(path, last=True, private=False, create=False)


def open_file(path: str) -> int:
    """The file ``path`` open for reading through open_parent, never through a link as its
    last step, and without blocking (a fifo) or becoming a controlling terminal."""
    dir_fd, name = open_parent(path)
    try:
        return os.open(name, _FILE, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _walk(path: str, *, last: bool, private: bool, create: bool) -> tuple[int, str]:
    parts = _components(os.path.abspath(path))
    if last and not parts:
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    stack = [(os.open("/", _PATH), "/")]  # the real directories walked through, from /
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            fd, shown = stack[-1]
            here = os.path.join(shown, name)
            target = _link(fd, shown, here, name)
            if target is not None:
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                parts[:0] = _components(target)
                continue
            if last and not parts:
                return _readable(fd), name
            stack.append((_open_child(fd, name, here, create, shown if private else None), here))
            if private:
                _check_private(stack[-2], stack[-1], last=not parts)
        if private:
            fd, shown = stack[-1]
            problem = others_can_write(os.fstat(fd), shown)
            if problem is not None:
                raise Unsafe(problem)
        return _readable(stack[-1][0]), ""
    finally:
        for fd, _ in stack:
            os.close(fd)


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _link(fd: int, shown: str, here: str, name: str) -> str | None:
    """The target of ``name`` in ``fd`` if it is a symbolic link we may follow; None if it is
    no link (or missing: the open that follows says so). Unsafe if others could have made it."""
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISLNK(st.st_mode):
        return None
    problem = others_can_write(os.fstat(fd), shown)
    if problem is not None:
        raise Unsafe(f"{here} is a symbolic link, and {problem}")
    return os.readlink(name, dir_fd=fd)


def _open_child(fd: int, name: str, here: str, create: bool, private: str | None) -> int:
    """Open ``name`` in ``fd``; ``create`` it if missing, but (``private``: the shown path of
    ``fd``) never in a directory that others can write: they could have made it first."""
    try:
        return open_subdir(fd, name, here, _PATH)
    except FileNotFoundError:
        if not create:
            raise
    problem = None if private is None else others_can_write(os.fstat(fd), private)
    if problem is not None:
        raise Unsafe(f"another user could replace {here}: {problem}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=fd)
    return open_subdir(fd, name, here, _PATH)


def _readable(fd: int) -> int:
    """A new descriptor of the directory open (O_PATH) as ``fd``, for reading if allowed."""
    try:
        return os.open(".", _DIR, dir_fd=fd)
    except PermissionError:
        return os.dup(fd)  # search only (0711): enough to open what is in it by name


def open_subdir(fd: int, name: str, shown: str, flags: int = _DIR) -> int:
    """The directory ``name`` in ``fd``, never through a link (Unsafe if it is one)."""
    try:
        return os.open(name, flags, dir_fd=fd)
    except OSError as e:
        # O_NOFOLLOW on a link fails with ELOOP, or ENOTDIR along with O_DIRECTORY.
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise Unsafe(f"{shown} is a symbolic link") from None
        raise


def _check_private(parent: tuple[int, str], child: tuple[int, str], *, last: bool) -> None:
    """No other user may replace ``child`` in ``parent``: the parent passes others_can_write,
    or it is sticky, root's or ours, and the child is root's or ours (chmod(2): in a sticky
    directory only the owner of an entry or of the directory may rename or remove it). The
    ``last`` directory's parent must pass others_can_write itself, as a pid file's does: in
    /tmp another user could have made the name first."""
    pst, cst = os.fstat(parent[0]), os.fstat(child[0])
    problem = others_can_write(pst, parent[1])
    if problem is None:
        return
    ours = (0, os.geteuid())
    if not last and pst.st_mode & stat.S_ISVTX and pst.st_uid in ours and cst.st_uid in ours:
        return
    raise Unsafe(f"another user could replace {child[1]}: {problem}")


MISSING = "not found"


def untrusted(path: str) -> str | None:
    """Why root must not run the program ``path`` (MISSING when it is not there), or None: a
    config value is not proof of who made the file (design.md, "Privileges"). Its directory
    passes this module's rule, the path holds no link that another user could have planted
    (open_parent), the file is root's or ours and nobody else may write it. Root runs
    notify.sendmail so (quarantine release, notices), and the doctor checks it the same way."""
    try:
        dir_fd, name = open_parent(path)
    except FileNotFoundError:
        return MISSING
    except (OSError, Unsafe) as e:
        return f"{path}: {e}"
    try:
        why = others_can_write(os.fstat(dir_fd), os.path.dirname(path))
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return MISSING
    finally:
        os.close(dir_fd)
    if why is None and not stat.S_ISREG(st.st_mode):
        why = f"{path} is not a regular file"
    elif why is None and st.st_uid not in (0, os.geteuid()):
        why = f"{path} belongs to another user (uid {st.st_uid})"
    elif why is None and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return why
