"""Opening Maildir and MH messages for the scan, by the directory descriptors of their folders.

``safedir.open_file`` walks a message's path from ``/`` one component at a time (an open and
a readlink per component: 18 system calls for ``/home/bob/Maildir/cur/x``), which on a
2-core machine took CPU from clamd itself (bench/rescan.py). Messages of one folder come
together from the walk, so each folder is opened once by that same walk (safedir.open_dir)
and its messages opened relative to it, never following a link (``O_NOFOLLOW``).

The same rule holds: what is read is in a directory reached without following a name another
user controls; a folder swapped for a link after it was opened changes nothing, since the
descriptor is the directory that was checked. Loose files and links named on the command line
keep going through ``safedir.open_file``, which follows such a link where no other user could
have made it (walk.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict

from avtool import safedir
from avtool.scan.mailbox.message import Message

KEEP = 16  # folders kept open (the walk finishes one folder before the next)


class Opener:
    """Opens messages; descriptors are closed with it. ``shared``: for any number of threads
    (each open works on a duplicate of the folder's descriptor, which another thread may close
    meanwhile); else for one thread (the scan's loop), three system calls fewer a message."""

    def __init__(self, *, shared: bool = True) -> None:
        self._dirs: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._shared = shared

    def open(self, m: Message) -> int:
        """A read-only, non-blocking descriptor of ``m``; OSError or safedir.Unsafe as
        safedir.open_file."""
        if m.format not in ("maildir", "mh"):
            return safedir.open_file(m.path)
        directory, name = os.path.split(m.path)
        if not self._shared:
            return os.open(name, safedir.READ_NOFOLLOW, dir_fd=self._folder(directory))
        with self._lock:
            # Another thread may close the cached one once the lock is released.
            mine = os.dup(self._folder(directory))
        try:
            return os.open(name, safedir.READ_NOFOLLOW, dir_fd=mine)
        finally:
            os.close(mine)

    def _folder(self, directory: str) -> int:
        """The folder's descriptor, opened on first use; the least recently used beyond KEEP
        is closed."""
        fd = self._dirs.get(directory)
        if fd is None:
            fd = safedir.open_dir(directory)
            self._dirs[directory] = fd
            while len(self._dirs) > KEEP:
                os.close(self._dirs.popitem(last=False)[1])
        else:
            self._dirs.move_to_end(directory)
        return fd

    def close(self) -> None:
        with self._lock:
            while self._dirs:
                with contextlib.suppress(OSError):
                    os.close(self._dirs.popitem()[1])

    def __del__(self) -> None:
        self.close()
