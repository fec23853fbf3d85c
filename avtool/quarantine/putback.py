"""Putting a quarantined mailbox message (origin "mailbox", intake.py) back where it was:
``avtool quarantine release`` calls put_back for such entries (the shared contract).

Where it goes comes from the entry's verdict.json, which the daemon's user can write: root
must not write where that file says on its word alone (design.md, "Privileges"). So:

- The mailbox is opened by root without following a name another user controls (safedir.py):
  a folder the owner replaced by a link, a ``cur/`` swapped for one, is refused with one line,
  and the entry stays.
- The folder (for an mbox, the mbox file) must belong to the uid the entry names, and that uid
  must not be root's: a forged entry cannot aim at a directory or file of someone else's.
- The writing itself runs in a child process that has become the mailbox's owner (setgroups,
  setresgid, setresuid) and works only through the descriptors root opened: the kernel checks
  the owner's rights on each step, and what it creates is the owner's, 0600.

Maildir: a fresh unique name in the ``new/`` or ``cur/`` it came from, keeping its flags,
written in ``tmp/`` and linked into place (the Maildir spec). mbox: appended with its From_
line under the mbox's fcntl, flock and dot locks (locking.py); a failure half way truncates
back. MH: the next free number, linked from a temporary name as mh-folders(5) recommends, and
back in the sequences it was in (``unseen``, ``flagged``, ...: the entry records them). Only
once the message is durable there does release remove the entry (release.py, under the entry's
lock); a failure before leaves the entry as it was, a crash after at worst a copy in both
places.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avtool import safedir
from avtool.errors import UsageError
from avtool.quarantine.store import Store
from avtool.scan.mailbox import maildir, mh, quota
from avtool.scan.mailbox.locking import Busy, locked
from avtool.scan.mailbox.maildir import copy_range

log = logging.getLogger("avtool.quarantine")

LOCK_TIMEOUT = 30.0  # seconds for an mbox's locks, as scan.lock_timeout's default
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = ("maildir", "mbox", "mh", "file")
MAX_SEQUENCES = 100
WARNING = "\0"  # a writer's answer: the path, then maybe this and a warning (no path has one)


@dataclass(frozen=True)
class Where:
    """Where a mailbox entry came from (verdict.json's ``mailbox``), checked for shape."""

    path: str
    kind: str
    name: str | None
    uid: int
    gid: int
    from_line: bytes
    sequences: tuple[str, ...] = ()  # MH: the sequences the message was in

    @classmethod
    def parse(cls, info: dict[str, Any]) -> Where:
        box = info.get("mailbox")
        if info.get("origin") != "mailbox" or not isinstance(box, dict):
            raise ValueError("not an entry from a mailbox")
        path, kind, name = box.get("path"), box.get("kind"), box.get("name")
        uid, gid = box.get("uid"), box.get("gid")
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise ValueError("mailbox.path: not an absolute path")
        if kind not in _KINDS:
            raise ValueError(f"mailbox.kind: {kind!r} is none of {', '.join(_KINDS)}")
        if name is not None and not isinstance(name, str):
            raise ValueError("mailbox.name: not a string")
        if not isinstance(uid, int) or not isinstance(gid, int) or uid < 0 or gid < 0:
            raise ValueError("mailbox.uid/gid: not user and group ids")
        seqs = box.get("sequences") or []
        if (
            not isinstance(seqs, list)
            or len(seqs) > MAX_SEQUENCES
            or not all(isinstance(n, str) and mh.SEQUENCE_NAME.fullmatch(n) for n in seqs)
        ):
            raise ValueError("mailbox.sequences: not a list of MH sequence names")
        line = box.get("from_line")
        from_line = line.encode("latin-1", "replace") if isinstance(line, str) else b""
        if not (from_line.startswith(b"From ") and from_line.count(b"\n") == 1):
            from_line = b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n"
        return cls(path, str(kind), name, uid, gid, from_line, tuple(seqs))


def put_back(store: Store, ident: str, entry_fd: int, info: dict[str, Any]) -> str:
    """Put the message of entry ``ident`` (open as ``entry_fd``, ``info`` its verdict.json)
    back into its mailbox as its owner; the path it went back to, durable there. The caller
    (release, holding the entry's lock) removes the entry then. UsageError with one clear line
    on failure: nothing was written, the entry stays. ``store``: the store it is in (the
    shared contract's signature; the entry is reached through ``entry_fd``)."""
    del store
    try:
        where = Where.parse(info)
    except ValueError as e:
        raise UsageError(f"{ident}: cannot put back: {e}") from None
    fail = f"{ident}: not put back into {where.path}"
    if where.uid == 0:
        raise UsageError(f"{fail}: it names a mailbox of root (uid 0); refused, the entry stays")
    try:
        data = os.open("data", _READ, dir_fd=entry_fd)
    except OSError as e:
        raise UsageError(f"{ident}: data: {e.strerror or e}; the entry stays") from None
    try:
        if not stat.S_ISREG(os.fstat(data).st_mode):
            raise UsageError(f"{ident}: data is not a regular file; the entry stays")
        path = _put(where, data, fail)
    finally:
        os.close(data)
    return path


def _put(where: Where, data: int, fail: str) -> str:
    """Open the target as root (no link of another user's followed), check whose it is, then
    write as the owner. UsageError (``fail``: its start) on any failure."""
    try:
        dir_fd, name = _open_target(where)
    except safedir.Unsafe as e:
        raise UsageError(f"{fail}: {e}; refused, the entry stays") from None
    except OSError as e:
        raise UsageError(f"{fail}: {_why(e)}; the entry stays") from None
    except _Refused as e:
        raise UsageError(f"{fail}: {e}; refused, the entry stays") from None
    try:
        writer = _WRITERS[where.kind]
        path, _, warning = _as_owner(where, lambda: writer(where, dir_fd, name, data)).partition(
            WARNING
        )
        if warning:
            log.warning("%s", warning)
        return path
    except (_Refused, safedir.Unsafe) as e:
        raise UsageError(f"{fail}: {e}; refused, the entry stays") from None
    except (OSError, Busy) as e:
        raise UsageError(f"{fail}: {_why(e)}; the entry stays") from None
    finally:
        os.close(dir_fd)


class _Refused(Exception):
    """The target is not the entry's owner's (or not what it was): never written."""


def _open_target(where: Where) -> tuple[int, str]:
    """(descriptor of the folder, or of the directory holding the mbox or file; the file's
    name there, "" for a folder), opened by root through safedir, checked to be the owner's."""
    if where.kind in ("maildir", "mh"):
        fd, name = safedir.open_dir(where.path), ""
        owner = os.fstat(fd).st_uid
    else:
        fd, name = safedir.open_parent(where.path)
        try:
            owner = os.stat(name, dir_fd=fd, follow_symlinks=False).st_uid
        except FileNotFoundError:
            owner = os.fstat(fd).st_uid if where.kind == "file" else where.uid
    if owner != where.uid:
        os.close(fd)
        raise _Refused(f"it belongs to uid {owner}, not to uid {where.uid} as the entry says")
    return fd, name


def _as_owner(where: Where, work: Callable[[], str]) -> str:
    """``work()`` in a child process that is the mailbox's owner (with the owner's groups);
    its answer, or the exception it ended with, as one line. Not root: only as that owner."""
    if os.geteuid() != 0:
        if os.geteuid() != where.uid:
            raise _Refused(f"only root or uid {where.uid} may write there")
        return work()
    try:
        groups = os.getgrouplist(pwd.getpwuid(where.uid).pw_name, where.gid)
    except KeyError:
        groups = [where.gid]
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the owner, work, say how it went, never return
        os.close(rfd)
        code, answer = 1, b"internal error"
        try:
            os.setgroups(groups)
            os.setresgid(where.gid, where.gid, where.gid)
            os.setresuid(where.uid, where.uid, where.uid)
            code, answer = 0, work().encode("utf-8", "surrogateescape")
        except (_Refused, safedir.Unsafe) as e:
            code, answer = 2, str(e).encode("utf-8", "replace")
        except (OSError, Busy) as e:
            answer = _why(e).encode("utf-8", "replace")
        except BaseException as e:  # noqa: BLE001 - a bug: one line, the entry stays
            answer = f"internal error: {type(e).__name__}: {e}".encode("utf-8", "replace")
        finally:
            with contextlib.suppress(OSError):
                os.write(wfd, answer)
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    text = answer.decode("utf-8", "surrogateescape")
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return text
    if code == 2:
        raise _Refused(text)
    raise OSError(errno.EIO, text or f"the child writing as uid {where.uid} ended with {code}")


def _maildir(where: Where, folder: int, _name: str, data: int) -> str:
    """A fresh unique name in ``new/`` or ``cur/`` (as it was), its flags kept."""
    sub, _, rest = (where.name or "new/").partition("/")
    if sub not in maildir.SUBDIRS:
        sub, rest = "new", ""
    info = rest.partition(":")[2] if sub == "cur" else ""
    tmp_fd = safedir.open_subdir(folder, "tmp", os.path.join(where.path, "tmp"))
    try:
        dest = safedir.open_subdir(folder, sub, os.path.join(where.path, sub))
        try:
            key = maildir.unique_name()
            name = f"{key}:{info}" if info else key
            _copy_new(data, tmp_fd, key)
            try:
                os.link(key, name, src_dir_fd=tmp_fd, dst_dir_fd=dest, follow_symlinks=False)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(key, dir_fd=tmp_fd)
            os.fsync(dest)
            quota.arrived(folder, where.path, name, os.fstat(data).st_size, where.uid)
            return os.path.join(where.path, sub, name)
        finally:
            os.close(dest)
    finally:
        os.close(tmp_fd)


def _mh(where: Where, folder: int, _name: str, data: int) -> str:
    """The next free number (past the highest there now, as nmh's refile does), made as
    mh-folders(5) says: a temporary file linked to the number, the next one while it is
    taken; then the message joins the sequences it was in. It is back once linked: a
    sequences file that cannot be changed (locked past LOCK_TIMEOUT, not a regular file) is
    one warning."""
    with os.scandir(folder) as entries:
        numbers = [int(e.name) for e in entries if e.name.isascii() and e.name.isdigit()]
    number = max(numbers, default=0) + 1
    temp = f".avtool-{maildir.unique_name()}"
    _copy_new(data, folder, temp)
    try:
        for _attempt in range(100):
            try:
                os.link(temp, str(number), src_dir_fd=folder, dst_dir_fd=folder,
                        follow_symlinks=False)  # fmt: skip
            except FileExistsError:
                number += 1
                continue
            break
        else:
            raise OSError(errno.EEXIST, "no free message number", where.path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)
    os.fsync(folder)
    path = os.path.join(where.path, str(number))
    try:
        mh.add_to_sequences(folder, number, where.sequences, LOCK_TIMEOUT)
    except (OSError, Busy) as e:
        seqs = " ".join(where.sequences)
        return f"{path}{WARNING}{path}: put back, but not into its sequences ({seqs}): {_why(e)}"
    return path


def _file(where: Where, dir_fd: int, name: str, data: int) -> str:
    """A loose message: its old name again, unless that is taken now."""
    _copy_new(data, dir_fd, name)
    os.fsync(dir_fd)
    return where.path


def _copy_new(data: int, dir_fd: int, name: str) -> None:
    """``name`` made in ``dir_fd`` (never through a link, never an existing one), 0600, with
    the held bytes and their time, fsynced; removed again on failure."""
    st = os.fstat(data)
    out = os.open(name, _NEW, 0o600, dir_fd=dir_fd)
    try:
        try:
            copy_range(data, out, 0, st.st_size)
            os.fchmod(out, 0o600)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise


def _mbox(where: Where, dir_fd: int, name: str, data: int) -> str:
    """Appended with its From_ line under the mbox's locks; truncated back on failure."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != where.uid:
            raise _Refused("the mbox is not a regular file of the owner's any more")
        with locked(dir_fd, name, fd, LOCK_TIMEOUT):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 5, 0) != b"From ":
                raise _Refused("the file does not start with a From_ line: not an mbox")
            tail = os.pread(fd, 2, max(0, size - 2))
            _append(fd, size, _gap(size, tail) + where.from_line, data)
    finally:
        os.close(fd)
    return where.path


def _gap(size: int, tail: bytes) -> bytes:
    """What makes the mbox end in a blank line before the next From_ line (mbox(5))."""
    if not size or tail.endswith(b"\n\n"):
        return b""
    return b"\n" if tail.endswith(b"\n") else b"\n\n"


def _append(fd: int, size: int, before: bytes, data: int) -> None:
    held = os.fstat(data).st_size
    end = b"\n" if held and os.pread(data, 1, held - 1) == b"\n" else b"\n\n"
    try:
        os.lseek(fd, size, os.SEEK_SET)
        _write_all(fd, before)
        copy_range(data, fd, 0, held)
        _write_all(fd, end)  # the blank line that ends an mbox message (mbox(5))
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # as it was: no half message left in the mbox
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _why(e: BaseException) -> str:
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    return str(e)


_WRITERS: dict[str, Callable[[Where, int, str, int], str]] = {
    "maildir": _maildir,
    "mh": _mh,
    "mbox": _mbox,
    "file": _file,
}
