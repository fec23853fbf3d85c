"""Maildir++ quota (Courier's maildirquota(7), README.maildirquota): a Maildir's
``maildirsize`` counts its bytes and messages, and whoever adds or removes a message appends
one line, ``bytes count`` (negative for a removal), in one write. avtool does so when a
message leaves a Maildir for the quarantine (``rescan --quarantine``, ``scan --move-to``) and
when ``quarantine release`` puts one back: else the owner's quota would count a quarantined
message, and not a released one, until Courier recalculates it.

Courier's rules (maildirquota.c): the file is in the Maildir; a folder (a directory that
holds a ``maildirfolder`` file) counts towards its parent's; no file means no quota (avtool
never creates one); the ``.Trash`` folder and messages flagged T (trashed) are not counted;
``,S=bytes`` in a name gives the size.

Root may be the writer (a removal): the file is opened relative to the folder's descriptor the
caller holds (``..`` of a directory descriptor is its real parent, no name to follow), never
through a link (O_NOFOLLOW), without blocking, and written only if it is a regular file with
one link that the mailbox's owner owns: a file the owner could write anyway. The count is a
cache Courier rebuilds, so every failure here is silent and changes nothing else.
"""

from __future__ import annotations

import os
import re
import stat

FILE = "maildirsize"
FOLDER_MARK = "maildirfolder"
TRASH = ".Trash"
_OPEN = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SIZE = re.compile(r",S=(\d+)")


def counted(folder: str, name: str) -> bool:
    """Whether Courier counts message file ``name`` of Maildir folder ``folder`` (a path)."""
    if os.path.basename(folder.rstrip("/")) == TRASH:
        return False
    return "T" not in name.partition(":2,")[2]  # the flags, "" when there are none


def size_of(name: str, st_size: int) -> int:
    """The size Courier counts: ``,S=`` in the name, else the file's."""
    found = _SIZE.search(name.partition(":")[0])
    return int(found.group(1)) if found else st_size


def left(subdir_fd: int, folder: str, name: str, st_size: int, owner: int) -> bool:
    """Message ``name`` (``st_size`` bytes) was removed from the ``cur/`` or ``new/`` open as
    ``subdir_fd`` of Maildir folder ``folder`` (a path), which uid ``owner`` owns: the quota
    loses it. Whether a line was written."""
    try:
        folder_fd = os.open("..", _DIR, dir_fd=subdir_fd)
    except OSError:
        return False
    try:
        return _record(folder_fd, folder, name, -size_of(name, st_size), -1, owner)
    finally:
        os.close(folder_fd)


def arrived(folder_fd: int, folder: str, name: str, st_size: int, owner: int) -> bool:
    """Message ``name`` was added to Maildir folder ``folder`` (open as ``folder_fd``)."""
    return _record(folder_fd, folder, name, size_of(name, st_size), 1, owner)


def _record(folder_fd: int, folder: str, name: str, size: int, count: int, owner: int) -> bool:
    if not counted(folder, name):
        return False
    try:
        root = _root(folder_fd)
    except OSError:
        return False
    try:
        fd = os.open(FILE, _OPEN, dir_fd=root)
    except OSError:  # none (no quota), a link, a fifo without a reader, not the owner's
        return False
    finally:
        if root != folder_fd:
            os.close(root)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != owner:
            return False
        line = b"%12d %12d\n" % (size, count)  # as maildirquota.c writes it: one write
        return os.write(fd, line) == len(line)
    except OSError:
        return False
    finally:
        os.close(fd)


def _root(folder_fd: int) -> int:
    """The descriptor of the Maildir whose quota counts the folder: the folder itself, or its
    parent when it holds ``maildirfolder`` (a new descriptor then)."""
    try:
        os.stat(FOLDER_MARK, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return folder_fd
    return os.open("..", _DIR, dir_fd=folder_fd)
