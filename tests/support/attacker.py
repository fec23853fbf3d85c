"""What a mailbox's owner can do to root's ``avtool scan --move-to``: one attack step per
command, run as that user (``python -m tests.support.attacker ...`` with ``user="nobody"``) by
tests/integration/test_move_attacks.py. Standard library only.

    swap DIR TARGET             rename DIR to DIR.away, and put a link to TARGET in its place
    lock-swap MBOX DIR TARGET   hold MBOX's fcntl lock; when root opens MBOX (inotify), swap DIR
                                as above, then let go of the lock: root, waiting for it, goes on
                                with a descriptor of the mbox and whatever names it uses
    hold KIND MBOX              hold the fcntl, flock or dot lock of MBOX until killed
    fifo FILE                   replace FILE with a fifo

Each prints ``ready`` once its set-up is done; lock-swap prints ``swapped`` after the swap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import sys
import time

IN_OPEN = 0x20  # inotify(7)


def swap(directory: str, target: str) -> None:
    os.rename(directory, directory + ".away")
    os.symlink(target, directory)


def wait_for_open(path: str) -> None:
    """Block until some process opens ``path`` (inotify(7), IN_OPEN); print ready first."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(path), IN_OPEN) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    print("ready", flush=True)
    os.read(fd, 4096)
    os.close(fd)


def lock_swap(mbox: str, directory: str, target: str) -> None:
    fd = os.open(mbox, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    wait_for_open(mbox)
    swap(directory, target)
    print("swapped", flush=True)
    time.sleep(0.3)  # root tries the lock again every 0.05-0.25 s: let it see it busy once more
    os.close(fd)  # the lock goes with the descriptor


def hold(kind: str, mbox: str) -> None:
    if kind == "dot":
        with open(mbox + ".lock", "x") as f:
            f.write(f"{os.getpid()}\n")
    else:
        fd = os.open(mbox, os.O_RDWR)
        if kind == "fcntl":
            fcntl.lockf(fd, fcntl.LOCK_EX)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
    print("ready", flush=True)
    while True:
        time.sleep(60)


def fifo(path: str) -> None:
    os.unlink(path)
    os.mkfifo(path, 0o600)
    print("ready", flush=True)


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "swap":
        swap(*args)
        print("ready", flush=True)
    elif command == "lock-swap":
        lock_swap(*args)
    elif command == "hold":
        hold(*args)
    elif command == "fifo":
        fifo(*args)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
