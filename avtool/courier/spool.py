"""The files a request names, on disk: path checks and opening, never through a link.

protocol.py turns bytes into a ``Request``; this module checks its paths (``check_paths``:
absolute, normalised, below ``serve.spool_dir``, regular files below real directories) and
opens the data file (``open_spooled``) for everything the filter does with it: the scan, the
header peek, the header rewrite and the quarantine copy all go through the one descriptor
opened here, and the rewrite's new file is made and renamed in the directory descriptor opened
with it. So once the file is open, swapping a directory on its path for a link (or another
file in) changes nothing for us: the checks and the use are about the same inodes.

Which failures are 5xx and which 4xx: protocol.py's docstring (``malformed``, ``transient``).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from avtool.courier.protocol import Request, malformed, transient
from avtool.safedir import READ_NOFOLLOW

# Directories on the way are opened O_PATH (search is all a path needs), the last one for
# reading: fsync after the rename needs a real descriptor (fsync(2) on O_PATH is EBADF).
_ON_THE_WAY = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LAST_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DataFile:
    """The data file open read-only on ``fd`` (``size`` bytes when opened) and its directory on
    ``dir_fd``, where it is called ``name``. ``close`` is idempotent."""

    __slots__ = ("fd", "dir_fd", "name", "size")

    def __init__(self, fd: int, dir_fd: int, name: str, size: int) -> None:
        self.fd = fd
        self.dir_fd = dir_fd
        self.name = name
        self.size = size

    def close(self) -> None:
        fd, dir_fd = self.fd, self.dir_fd
        self.fd = self.dir_fd = -1
        try:
            if fd >= 0:
                os.close(fd)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)


def open_spooled(path: str, spool_dir: str) -> DataFile:
    """Open the data file ``path`` (checked by check_paths) and its directory, walking from
    ``spool_dir`` one directory at a time with ``O_NOFOLLOW`` (safedir.py's rule: a directory
    swapped for a link since the checks fails here with ELOOP or ENOTDIR, never leads out of
    the spool). Raises ProtocolError as open_message does."""
    spool = posixpath.normpath(spool_dir)
    parts = path[len(spool.rstrip("/")) + 1 :].split("/")
    try:
        # The spool itself is the admin's setting: a link there is theirs to make.
        dir_fd = os.open(spool, (_LAST_DIR if len(parts) == 1 else _ON_THE_WAY) & ~os.O_NOFOLLOW)
        for i, part in enumerate(parts[:-1]):
            flags = _LAST_DIR if i == len(parts) - 2 else _ON_THE_WAY
            try:
                fd = os.open(part, flags, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            dir_fd = fd
    except FileNotFoundError:
        raise transient("file vanished", f": {path!r}") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise malformed("a directory in the path is not a directory", f": {path!r}") from None
        raise transient(f"cannot open a directory ({e.strerror})", f": {path!r}") from None
    try:
        fd, size = _open_checked(parts[-1], path, dir_fd)
    except BaseException:
        os.close(dir_fd)
        raise
    return DataFile(fd, dir_fd, parts[-1], size)


def check_paths(request: Request, spool_dir: str) -> None:
    """Check every path of ``request`` without following a symlink or opening anything: each
    must be absolute and normalised (no ``.``, ``..``, ``//`` or trailing ``/``), below
    ``spool_dir``, not named twice, and (``lstat``) a regular file below real directories.
    Raises ProtocolError with a 5xx or 4xx reply (module docstring)."""
    spool = posixpath.normpath(spool_dir)
    if not spool.startswith("/"):
        raise ValueError(f"spool_dir must be absolute, not {spool_dir!r}")
    paths = (request.data_path, *request.control_paths)
    for path in paths:
        _check_form(path, spool)
    if len(set(paths)) != len(paths):
        raise malformed("the same file named twice")
    seen: set[str] = set()  # directories checked: data and control files share theirs
    for path in paths:
        _check_file(path, spool, seen)


def _check_form(path: str, spool: str) -> None:
    if not path.startswith("/"):
        raise transient("relative path", f": {path!r}")
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise malformed("path not normalised", f": {path!r}")
    if not path.startswith(spool.rstrip("/") + "/"):
        raise transient("path outside the spool directory", f": {path!r} (not below {spool})")


def _check_file(path: str, spool: str, seen: set[str]) -> None:
    # Directories between the spool and the file must be real directories: a symlinked
    # tmp/NNN would let lstat of the last part look fine while pointing anywhere.
    parts = path[len(spool.rstrip("/")) + 1 :].split("/")
    current = spool
    for part in parts[:-1]:
        current = posixpath.join(current, part)
        if current in seen:
            continue
        if not stat.S_ISDIR(_lstat(current).st_mode):
            raise malformed("a directory in the path is not a directory", f": {current!r}")
        seen.add(current)
    mode = _lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise malformed(f"not a regular file ({_kind(mode)})", f": {path!r}")


def _lstat(name: str, dir_fd: int | None = None, path: str = "") -> os.stat_result:
    path = path or name
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        raise transient("file vanished", f": {path!r}") from None
    except OSError as e:
        raise transient(f"cannot stat a file ({e.strerror})", f": {path!r}") from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "unknown type"  # pragma: no cover - every Linux file type is listed above


def open_beside(data: DataFile, data_path: str, path: str) -> int:
    """Open ``path`` read-only as open_data does, through the directory descriptor of
    ``data`` (opened from ``data_path``) when it lies in the same directory, as Courier's
    control files do: the same inode the checks saw, whatever the path names by now."""
    directory, name = posixpath.split(path)
    if directory == posixpath.dirname(data_path) and data.dir_fd >= 0:
        return _open_checked(name, path, data.dir_fd)[0]
    return open_data(path)


def open_data(path: str) -> int:
    """Open the data file read-only and return the descriptor (the caller closes it); see
    open_message. For a file outside the daemon (batch-test's harness, a quarantine copy of a
    control file)."""
    return open_message(path)[0]


def open_message(path: str) -> tuple[int, int]:
    """Open the file ``path`` read-only: (descriptor, size); the caller closes it. ``lstat``
    first, so that a device is never opened (opening one can have effects); then
    ``READ_NOFOLLOW`` (a symlink swapped in meanwhile fails with ELOOP, a fifo does not block
    the open) and an ``fstat`` check on what was really opened. Raises ProtocolError: 5xx for a
    file of the wrong kind, 4xx for a vanished/unreadable one."""
    return _open_checked(path, path, None)


def _open_checked(name: str, path: str, dir_fd: int | None) -> tuple[int, int]:
    """open_message of ``name`` in ``dir_fd`` (None: ``name`` is a path); ``path`` is shown."""
    mode = _lstat(name, dir_fd, path).st_mode
    if not stat.S_ISREG(mode):
        raise malformed(f"not a regular file ({_kind(mode)})", f": {path!r}")
    try:
        fd = os.open(name, READ_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        raise transient("file vanished", f": {path!r}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise malformed("not a regular file (symlink)", f": {path!r}") from None
        raise transient(f"cannot open the message ({e.strerror})", f": {path!r}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise malformed(f"not a regular file ({_kind(st.st_mode)})", f": {path!r}")
        os.set_blocking(fd, True)  # a regular file ignores it, but clamd gets a plain fd
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size
