"""From command-line arguments to messages: what each path is, found by looking at it.

A directory with ``cur/`` and ``new/`` is a Maildir (its ``.Folder`` subdirectories too), one
with ``.mh_sequences`` or only numbered files an MH folder, any other directory is walked. A
file is an mbox if it starts with a From_ line, a message if it starts with a header field;
anything else is reported and skipped. Symbolic links met while walking are not followed
(clamd's FollowDirectorySymlinks and FollowFileSymlinks default to no, clamd.conf(5)); links
named on the command line are, where no other user could have made them: files are opened
through safedir.open_file, which follows no link in a directory that another user can write.

Every problem is a Problem item in the stream, never an exception: the walk goes on.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from typing import BinaryIO, Literal

from avtool import safedir
from avtool.scan.mailbox import maildir, mbox, mh
from avtool.scan.mailbox.message import Message, OpenFile, Problem

STDIN = "-"
_PEEK = 4096
# A header field name: printable US-ASCII but the colon (RFC 5322 section 2.2).
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}:")

Item = Message | Problem
Counts = tuple[int, int]  # messages, problems that are errors
# Called with (path, fstat) of each file met outside Maildir and MH folders, before a byte of
# it is read: True means "known, do not read it" (rescan: an mbox unchanged since its scan).
Known = Callable[[str, os.stat_result], bool]


def kind_of(head: bytes) -> Literal["mbox", "message"] | None:
    """What the first bytes of a file say it is."""
    if head.startswith(b"From "):
        return "mbox"
    if _FIELD.match(head) and b"\0" not in head:
        return "message"
    return None


def walk(
    args: Sequence[str],
    *,
    stdin: OpenFile | None = None,
    exclude: Collection[tuple[int, int]] = (),
    stop: threading.Event | None = None,
    known: Known | None = None,
    named: bool = True,
) -> Iterator[Item]:
    """Messages and problems for each argument, in order, streamed. ``-`` is ``stdin``, already
    spooled (spool()); ``exclude`` holds (st_dev, st_ino) of directories not to enter (the
    quarantine); ``stop`` ends the walk early; ``known``: files not to read (Known).
    ``named``: the arguments are a person's words, so an empty mailbox among them or a file
    that is no mail is an error (rescan's own roots are not: a user with no mail yet)."""
    for arg in args:
        items = _stdin(stdin) if arg == STDIN else _argument(arg, exclude, known, named)
        for item in items:
            yield item
            if stop is not None and stop.is_set():
                return


def spool(stream: BinaryIO) -> OpenFile:
    """Standard input copied to an anonymous temp file (a pipe can be read once, and clamd
    needs a file to be handed by descriptor). Disk, not memory: its size is not bounded."""
    fd, name = tempfile.mkstemp(prefix="avtool-stdin-")
    os.unlink(name)
    source = OpenFile(fd)
    while data := stream.read(1 << 20):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    return source


def _stdin(source: OpenFile | None) -> Iterator[Item]:
    if source is None:
        yield Problem(STDIN, "standard input was not read")
        return
    size = os.fstat(source.fd).st_size
    kind = kind_of(os.pread(source.fd, _PEEK, 0))
    if size == 0:
        yield Problem(STDIN, "empty input: no message on standard input")
    elif kind == "mbox":
        yield from mbox.messages(STDIN, source, size)
    elif kind == "message":
        yield Message(STDIN, "file", "", STDIN, size, 0, 0, size, source=source)
    else:
        yield Problem(STDIN, "not a mail message or mailbox (unrecognised or binary data)")


def _argument(
    arg: str, exclude: Collection[tuple[int, int]], known: Known | None, named: bool
) -> Iterator[Item]:
    try:
        st = os.stat(arg)
    except OSError as e:
        yield Problem(arg, why(e))
        return
    if stat.S_ISDIR(st.st_mode):
        yield from _directory(arg, exclude, known, named=named)
    elif stat.S_ISREG(st.st_mode):
        yield from _file(arg, known, named=named)
    else:
        yield Problem(arg, "not a file or directory (a device, pipe or socket)")


def _directory(
    path: str, exclude: Collection[tuple[int, int]], known: Known | None, *, named: bool
) -> Iterator[Item]:
    try:
        st = os.stat(path)
    except OSError as e:
        yield Problem(path, why(e))
        return
    if (st.st_dev, st.st_ino) in exclude:
        return
    if maildir.is_maildir(path):
        found = yield from _counted(maildir.messages(path))
        for folder in maildir.folders(path):
            found = _add(
                found, (yield from _counted(_directory(folder, exclude, known, named=False)))
            )
        empty = "empty Maildir: no message in new/ or cur/"
    elif mh.is_mh(path):
        found = yield from _counted(mh.messages(path))
        for folder in mh.folders(path):
            found = _add(
                found, (yield from _counted(_directory(folder, exclude, known, named=False)))
            )
        empty = "empty MH folder: no numbered message file"
    else:
        found = yield from _counted(_plain(path, exclude, known))
        empty = "no mail found in this directory"
    if named and found == (0, 0):
        yield Problem(path, empty)


def _plain(path: str, exclude: Collection[tuple[int, int]], known: Known | None) -> Iterator[Item]:
    try:
        entries = os.scandir(path)
    except OSError as e:
        yield Problem(path, f"cannot list: {why(e)}")
        return
    with entries:
        for entry in entries:
            try:
                if entry.is_symlink():
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                yield from _directory(entry.path, exclude, known, named=False)
            elif is_file:
                yield from _file(entry.path, known, named=False)


def _file(path: str, known: Known | None, *, named: bool) -> Iterator[Item]:
    try:
        fd = safedir.open_file(path)  # root never opens a device a user's link points at
    except OSError as e:
        yield Problem(path, f"cannot read: {why(e)}")
        return
    except safedir.Unsafe as e:
        yield Problem(path, f"cannot read: {e}")
        return
    source = OpenFile(fd)
    try:
        st = os.fstat(fd)
        if known is not None and known(path, st):
            return
        size = st.st_size
        head = os.pread(fd, _PEEK, 0)
    except OSError as e:
        yield Problem(path, f"cannot read: {why(e)}")
        return
    kind = kind_of(head)
    if size == 0:
        if named:
            yield Problem(path, "empty file: no message")
    elif kind == "mbox":
        yield from mbox.messages(path, source, size)
    elif kind == "message":
        yield Message(
            path, "file", "", path, size, dev=st.st_dev, ino=st.st_ino, mtime=st.st_mtime_ns
        )
    else:
        text = "not a mail message or mailbox (unrecognised or binary data); skipped"
        yield Problem(path, text, error=named)


def _counted(items: Iterator[Item]) -> Generator[Item, None, Counts]:
    """Pass ``items`` through; return (messages, error problems) seen."""
    messages = errors = 0
    for item in items:
        if isinstance(item, Message):
            messages += 1
        elif item.error:
            errors += 1
        yield item
    return messages, errors


def _add(a: Counts, b: Counts) -> Counts:
    return a[0] + b[0], a[1] + b[1]


def why(e: OSError) -> str:
    """An OSError as a short lowercase reason: ``no such file or directory``."""
    text = e.strerror or type(e).__name__
    return text[:1].lower() + text[1:]
