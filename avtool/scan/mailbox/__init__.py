"""Mail files and mailboxes for ``avtool scan``: reading them, and moving messages out of them.

Modules: message.py (Message, Problem, header fields), walk.py (arguments -> messages, format
detection, stdin), maildir.py, mbox.py, mh.py (one format each), locking.py (mbox locks as
Debian's mail programs take them), quarantine.py (moving infected messages to a Maildir).
Nothing here prints; problems are items in the stream.
"""

from avtool.scan.mailbox.message import Format, Message, OpenFile, Problem
from avtool.scan.mailbox.quarantine import Moved, move, open_quarantine
from avtool.scan.mailbox.walk import STDIN, spool, walk

__all__ = [
    "STDIN",
    "Format",
    "Message",
    "Moved",
    "OpenFile",
    "Problem",
    "move",
    "open_quarantine",
    "spool",
    "walk",
]
