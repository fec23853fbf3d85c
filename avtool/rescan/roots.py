"""What rescan scans: the ROOT arguments, else ``rescan.roots`` (globs), else the ``~/Maildir``
of every local user in the passwd database that has one.

Roots rescan finds by itself are in directories users control (``/home/bob``): a root that is
a symbolic link there (``~bob/Maildir -> ~alice/Maildir``) would have root read, and report as
bob's, another user's mail. Each such root is therefore opened by safedir's rule (a link is
followed only where no other user could have made it) and refused with one line otherwise.
Roots named on the command line are the admin's words, taken as ``avtool scan`` takes them.
"""

from __future__ import annotations

import glob
import os
import pwd
from collections.abc import Sequence

from avtool import safedir
from avtool.config import Config
from avtool.config import keys as K
from avtool.scan.mailbox import Problem
from avtool.scan.mailbox.walk import why


def resolve(cfg: Config, args: Sequence[str]) -> tuple[list[str], list[Problem]]:
    """(paths to walk, problems: one line each, the run goes on)."""
    if args:
        return list(args), []
    patterns = cfg[K.RESCAN_ROOTS]
    problems: list[Problem] = []
    if patterns:
        found: list[str] = []
        for pattern in patterns:
            matches = sorted(glob.glob(pattern))
            if not matches:
                problems.append(Problem(pattern, "rescan.roots: no mailbox matches", False))
            found += matches
    else:
        found = user_maildirs()
        if not found:
            text = "no local user has a ~/Maildir (set rescan.roots for other mailboxes)"
            problems.append(Problem("passwd", text, False))
    paths = []
    for path in dict.fromkeys(found):
        problem = _unsafe(path)
        if problem is None:
            paths.append(path)
        else:
            problems.append(problem)
    return paths, problems


def user_maildirs() -> list[str]:
    """``~/Maildir`` of each passwd entry whose home is a real directory (not ``/``, not
    ``/nonexistent``), once per home."""
    homes = {pw.pw_dir for pw in pwd.getpwall() if pw.pw_dir.startswith("/") and pw.pw_dir != "/"}
    found = []
    for home in sorted(homes):
        path = os.path.join(home, "Maildir")
        if os.path.isdir(path):
            found.append(path)
    return found


def _unsafe(path: str) -> Problem | None:
    try:
        if os.path.isdir(path):
            fd = safedir.open_dir(path)
        else:
            fd, _ = safedir.open_parent(path)
    except safedir.Unsafe as e:
        return Problem(path, f"not scanned: {e}")
    except OSError as e:
        return Problem(path, why(e))
    os.close(fd)
    return None
