"""MH folders: one message per file named by a positive number, sequences in ``.mh_sequences``
(mh-sequence(5) of nmh: ``name: 1-3 7``), subfolders as subdirectories. Other files (``,12``
backups of removed messages, ``.xmhcache``) are not messages."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from avtool.mailbox.message import Message, Problem

SEQUENCES = ".mh_sequences"


def is_mh(path: str) -> bool:
    """A folder with ``.mh_sequences``, or whose visible files are all numbered (nmh writes the
    sequences file only once a sequence exists, so a fresh folder has none)."""
    if os.path.isfile(os.path.join(path, SEQUENCES)):
        return True
    numbered = False
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith((".", ",")) or not _is_file(entry):
                    continue
                if not _is_number(entry.name):
                    return False
                numbered = True
    except OSError:
        return False
    return numbered


def messages(path: str) -> Iterator[Message | Problem]:
    try:
        entries = os.scandir(path)
    except OSError as e:
        yield Problem(path, f"cannot list: {e.strerror or e}")
        return
    with entries:
        for entry in entries:
            if not _is_number(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield Message(
                    path, "mh", entry.name, entry.path, st.st_size, dev=st.st_dev, ino=st.st_ino
                )


def folders(path: str) -> Iterator[str]:
    try:
        with os.scandir(path) as entries:
            names = [
                e.path
                for e in entries
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return
    yield from sorted(names)


def sequences(path: str, dir_fd: int | None = None) -> dict[str, set[int]]:
    """The folder's sequences: name -> message numbers (missing or unreadable file: none).
    ``dir_fd``: the folder, open (root moving a user's mail reads it only through that, and
    never through a link: safedir.py)."""
    found: dict[str, set[int]] = {}
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        if dir_fd is None:
            fd = os.open(os.path.join(path, SEQUENCES), flags)
        else:
            fd = os.open(SEQUENCES, flags, dir_fd=dir_fd)
        with open(fd, encoding="utf-8", errors="replace") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return found
            text = f.read()
    except OSError:
        return found
    name = ""
    for line in text.splitlines():
        if line[:1].isspace() and name:  # a continuation line (mh-sequence(5))
            rest = line
        else:
            name, sep, rest = line.partition(":")
            if not sep:
                name = ""
                continue
            name = name.strip()
        numbers = found.setdefault(name, set())
        for part in rest.split():
            low, _, high = part.partition("-")
            if low.isdigit() and (not high or high.isdigit()):
                numbers.update(range(int(low), int(high or low) + 1))
    return found


def maildir_flags(key: str, seqs: dict[str, set[int]]) -> str:
    """Maildir flags for MH message ``key``, as Python's mailbox converts an MHMessage to a
    MaildirMessage: seen unless in ``unseen``; ``flagged`` -> F, ``replied`` -> R."""
    number = int(key)
    flags = "" if number in seqs.get("unseen", ()) else "S"
    if number in seqs.get("flagged", ()):
        flags += "F"
    if number in seqs.get("replied", ()):
        flags += "R"
    return flags


def _is_number(name: str) -> bool:
    return name.isascii() and name.isdigit() and name[0] != "0"


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False
