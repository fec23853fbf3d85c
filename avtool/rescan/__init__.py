"""Retro-scan (``avtool rescan``): after a signature update, the delivered mail that today's
signatures name, found without scanning twice what was already scanned with them.

Modules: runner.py (the run: walk, filter through the state, scan, record; the Actions hooks),
state.py (SQLite: what was scanned with which signatures, findings), identity.py (which
signatures clamd has), roots.py (which mailboxes), window.py (which mail: ``rescan.days``),
actions.py (what ``--quarantine`` and ``--notify`` do with a finding).
"""
