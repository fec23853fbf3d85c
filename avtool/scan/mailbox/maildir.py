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

from avtool import safedir
from avtool.scan.mailbox.message import Message, Problem

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
                yield _message(path, sub, entry.name, entry.path, st)


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


def _message(mailbox: str, sub: str, name: str, path: str, st: os.stat_result) -> Message:
    """The Message for file ``name`` (key:info) in ``sub`` of ``mailbox``, as ``st`` found it."""
    key, _, info = name.partition(":")
    return Message(
        mailbox, "maildir", key, path, st.st_size, subdir=sub, info=info, dev=st.st_dev,
        ino=st.st_ino, mtime=st.st_mtime_ns,
    )  # fmt: skip


def relocate(message: Message) -> Message | None:
    """The same message after a reader renamed it (a flag change renames the file in ``cur/``,
    reading moves it from ``new/`` to ``cur/``): found again by its unique name."""
    for sub in SUBDIRS:
        try:
            with os.scandir(os.path.join(message.mailbox, sub)) as entries:
                for entry in entries:
                    key, _, info = entry.name.partition(":")
                    if key == message.key:
                        st = entry.stat(follow_symlinks=False)
                        return _message(message.mailbox, sub, entry.name, entry.path, st)
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


class Maildir:
    """A Maildir to deliver into (the quarantine of ``scan --move-to``), created if missing.

    Root writes here, so no other user may be able to choose where that is: the directory is
    opened once with safedir.open_dir(private=True) (no other user can write it or replace a
    directory on its path, links followed only where others cannot make them), and every later
    step goes through the descriptors of it and of ``tmp/``, ``new/`` and ``cur/``. They are
    0700: made so, or an existing wider one tightened (its messages are other people's mail).
    Unsafe (safedir) or OSError when it cannot be opened so. ``close()`` when done.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd = safedir.open_dir(self.path, private=True, create=True)
        self.dirs: dict[str, int] = {}
        try:
            _private(self.fd, self.path)
            for sub in ("tmp", "new", "cur"):
                self.dirs[sub] = _subdir(self.fd, os.path.join(self.path, sub), sub)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.fd, *self.dirs.values()):
            if fd >= 0:
                os.close(fd)
        self.fd, self.dirs = -1, {}

    def take(self, fd: int, st: os.stat_result, subdir: str, key: str, info: str) -> str:
        """Put in the file open as ``fd`` (``st``: its fstat) as ``subdir/key[:info]``, or under
        a new unique name if that is taken. Returns where it is now.

        The inode itself is linked in by its descriptor (link(2) of ``/proc/self/fd/N`` with
        AT_SYMLINK_FOLLOW, proc(5)): what lands here is exactly the file that was checked,
        whatever its old name points at by now. Across filesystems (EXDEV), or where the kernel
        refuses the link (EPERM: fs.protected_hardlinks, for a user who does not own the file),
        a copy with the file's owner, mode and times, fsynced. The caller removes the old name.
        """
        tmp = unique_name()
        try:
            os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=self.dirs["tmp"], follow_symlinks=True)
        except OSError as e:
            # ENOENT: no /proc (or the file was deleted meanwhile: then the caller's check of
            # its name fails, and the copy is undone).
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOENT):
                raise
            self._write(tmp, fd, 0, st.st_size, st)
        return self._place(tmp, subdir, key, info)

    def add_range(self, fd: int, offset: int, size: int, subdir: str, info: str) -> str:
        """Deliver ``size`` bytes at ``offset`` of ``fd`` (an mbox message) under a new unique
        name: written to ``tmp/`` (0600, whatever the umask), fsynced, renamed into place."""
        tmp = unique_name()
        self._write(tmp, fd, offset, size, None)
        return self._place(tmp, subdir, "", info)

    def remove(self, path: str) -> None:
        """Undo a delivery (``path`` as returned by take or add_range)."""
        directory = self.dirs[os.path.basename(os.path.dirname(path))]
        os.unlink(os.path.basename(path), dir_fd=directory)
        os.fsync(directory)

    def _write(self, tmp: str, fd: int, offset: int, size: int, st: os.stat_result | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(tmp, flags, 0o600, dir_fd=self.dirs["tmp"])
        try:
            try:
                copy_range(fd, out, offset, size)
                if st is not None:
                    with contextlib.suppress(OSError):  # keep the owner when we can (root)
                        os.fchown(out, st.st_uid, st.st_gid)
                    os.fchmod(out, stat.S_IMODE(st.st_mode))
                    # Readers show the file's mtime as the delivery date (Maildir spec).
                    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.fsync(out)
            finally:
                os.close(out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.dirs["tmp"])
            raise

    def _place(self, tmp: str, subdir: str, key: str, info: str) -> str:
        """Rename ``tmp/tmp`` to ``subdir/key[:info]`` (a new unique name if that is taken)."""
        directory = self.dirs[subdir]
        name = f"{key}:{info}" if info else key
        if not key or _exists(directory, name):
            key = unique_name()
            name = f"{key}:{info}" if info else key
        try:
            os.rename(tmp, name, src_dir_fd=self.dirs["tmp"], dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.dirs["tmp"])
            raise
        os.fsync(directory)  # rename(2) is atomic, not durable
        return os.path.join(self.path, subdir, name)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _subdir(parent: int, shown: str, name: str) -> int:
    """``tmp/``, ``new/`` or ``cur/`` of the target, made 0700 if missing, never a link."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
    fd = safedir.open_subdir(parent, name, shown)
    try:
        _private(fd, shown)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _private(fd: int, shown: str) -> None:
    """Refuse a directory that others can write; tighten one of ours to 0700."""
    st = os.fstat(fd)
    problem = safedir.others_can_write(st, shown)
    if problem is not None:
        raise safedir.Unsafe(problem)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(fd, 0o700)


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
