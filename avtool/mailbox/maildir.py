"""Maildir: listing ``new/`` and ``cur/``, and a Maildir to deliver into (the quarantine).

The layout and names follow the Maildir spec (cr.yp.to/proto/maildir.html): messages in ``new/``
(not yet seen by a reader) and ``cur/``; ``tmp/`` holds deliveries in progress and is not read;
a name is ``unique[:2,FLAGS]`` and only ``cur/`` names carry the ``:2,`` info. Courier keeps
folders as Maildir++ subdirectories whose names start with a dot (``.Sent``); its other
subdirectories (``courierimapkeywords``) and top-level files (``maildirsize``,
``courierimapuiddb``) are metadata, not messages.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import stat
import time
from collections.abc import Iterator

from avtool.mailbox.message import Message, Problem

SUBDIRS = ("new", "cur")
_counter = itertools.count()


def is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) and os.path.isdir(os.path.join(path, "new"))


def messages(path: str) -> Iterator[Message | Problem]:
    """Every message in ``new/`` and ``cur/`` (files only; names starting with a dot are not
    messages), streamed: a Maildir of any size costs the same memory."""
    for sub in SUBDIRS:
        directory = os.path.join(path, sub)
        try:
            entries = os.scandir(directory)
        except OSError as e:
            yield Problem(directory, f"cannot list: {e.strerror or e}")
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # moved or deleted by a reader meanwhile: not ours to report
                if not stat.S_ISREG(st.st_mode):
                    continue
                key, _, info = entry.name.partition(":")
                yield Message(path, "maildir", key, entry.path, st.st_size, subdir=sub, info=info)


def folders(path: str) -> Iterator[str]:
    """Maildir++ subfolders (``.Name``) of a Maildir, which are Maildirs themselves."""
    try:
        with os.scandir(path) as entries:
            names = [e.path for e in entries if e.name.startswith(".") and _is_dir(e)]
    except OSError:
        return
    yield from sorted(names)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def relocate(message: Message) -> Message | None:
    """The same message after a reader renamed it (a flag change renames the file in ``cur/``,
    reading moves it from ``new/`` to ``cur/``): found again by its unique name."""
    for sub in SUBDIRS:
        try:
            with os.scandir(os.path.join(message.mailbox, sub)) as entries:
                for entry in entries:
                    key, _, info = entry.name.partition(":")
                    if key == message.key:
                        size = entry.stat(follow_symlinks=False).st_size
                        return Message(
                            message.mailbox,
                            "maildir",
                            key,
                            entry.path,
                            size,
                            subdir=sub,
                            info=info,
                        )
        except OSError:
            continue
    return None


def unique_name() -> str:
    """A new unique name: ``time.MusecPpidQn.host``, as Python's mailbox.Maildir makes them
    (the spec's ``/`` and ``:`` in the host name are written as ``\\057`` and ``\\072``)."""
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"


def flags_of(info: str) -> str:
    """The flags in a Maildir info (``2,FS`` -> ``FS``); experimental ``1,`` infos have none."""
    return info[2:] if info.startswith("2,") else ""


def placement(flags: str, *, seen: bool = False) -> tuple[str, str]:
    """(subdir, info) for a message coming from another format: with flags, or seen by a reader
    (``seen``), it belongs in ``cur/`` with a ``2,`` info; otherwise in ``new/`` (Maildir spec)."""
    if flags or seen:
        return "cur", "2," + "".join(sorted(set(flags)))
    return "new", ""


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable (rename(2) alone is atomic, not durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Maildir:
    """A Maildir to deliver into, created (0700) if missing: the quarantine."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        os.makedirs(self.path, mode=0o700, exist_ok=True)  # makedirs gives 0700 to leaves only
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)

    def target(self, subdir: str, key: str, info: str) -> str:
        """Where a message goes: ``subdir/key[:info]``, or a new unique name if that is taken
        (or there is no key: messages from mbox, MH and loose files have no Maildir name)."""
        if not key or os.path.lexists(self._path(subdir, key, info)):
            key = unique_name()
        return self._path(subdir, key, info)

    def _path(self, subdir: str, key: str, info: str) -> str:
        return os.path.join(self.path, subdir, f"{key}:{info}" if info else key)

    def move_file(self, source: str, subdir: str, key: str, info: str) -> str:
        """Move the file ``source`` in: one atomic rename on the same filesystem; across
        filesystems (EXDEV) a copy to ``tmp/``, fsync, rename into place, then the unlink of
        the source. Returns where it is now. A failure undoes the copy, so the message stays
        in exactly one place; only a hard kill between copy and unlink can leave two."""
        target = self.target(subdir, key, info)
        try:
            os.rename(source, target)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
        else:
            fsync_dir(os.path.dirname(target))
            fsync_dir(os.path.dirname(source))
            return target
        with open(source, "rb") as src:
            st = os.fstat(src.fileno())
            self._copy_in(src.fileno(), 0, st.st_size, target, st)
        try:
            os.unlink(source)
            fsync_dir(os.path.dirname(source))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(target)  # undo: the message stays where it was, and only there
            raise
        return target

    def add_range(self, fd: int, offset: int, size: int, subdir: str, info: str) -> str:
        """Deliver ``size`` bytes at ``offset`` of ``fd`` (an mbox message) under a new unique
        name: written to ``tmp/``, fsynced, renamed into place. Returns the new path."""
        target = self.target(subdir, "", info)
        self._copy_in(fd, offset, size, target, None)
        return target

    def remove(self, path: str) -> None:
        """Undo a delivery (the mbox rewrite that would have followed it failed)."""
        os.unlink(path)
        fsync_dir(os.path.dirname(path))

    def _copy_in(
        self, fd: int, offset: int, size: int, target: str, st: os.stat_result | None
    ) -> None:
        tmp = os.path.join(self.path, "tmp", unique_name())
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                copy_range(fd, out, offset, size)
                if st is not None:
                    with contextlib.suppress(OSError):  # keep the owner when we can (root)
                        os.fchown(out, st.st_uid, st.st_gid)
                    os.fchmod(out, stat.S_IMODE(st.st_mode))
                os.fsync(out)
            finally:
                os.close(out)
            if st is not None:
                # Readers show the file's mtime as the delivery date (Maildir spec).
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(os.path.dirname(target))


def copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """Copy ``size`` bytes at ``offset`` of ``src`` to ``dst`` (at its current offset) in the
    kernel with os.sendfile (any output file since Linux 2.6.33, sendfile(2)); Python never
    holds the data. Falls back to pread/write where sendfile refuses."""
    end = offset + size
    while offset < end:
        try:
            sent = os.sendfile(dst, src, offset, min(end - offset, 1 << 30))
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            _copy_slow(src, dst, offset, end)
            return
        if sent == 0:
            raise OSError(errno.EIO, "the file shrank while it was being copied")
        offset += sent


def _copy_slow(src: int, dst: int, offset: int, end: int) -> None:
    while offset < end:
        data = os.pread(src, min(end - offset, 1 << 20), offset)
        if not data:
            raise OSError(errno.EIO, "the file shrank while it was being copied")
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view) :]
        offset += len(data)
