"""Which signatures clamd scans with: the identity that decides whether a message scanned
before must be scanned again.

clamd's VERSION names its daily database (``ClamAV 1.4.6/27000/Mon Nov 30 ...``) only when
one is loaded; with test signatures or a custom database alone it says ``ClamAV 1.4.6``
(docs/notes/clamav.md §2), and adding a ``.ndb`` changes nothing it reports. So when clamd is
local (its clamd.conf found from /proc, engine/clamdconf.py), the listing of its
DatabaseDirectory (names, sizes, mtimes) is digested too: adding, removing or replacing a
database file is a change. Both are combined when both exist: VERSION moves only once clamd
has loaded a new daily database, the listing as soon as freshclam wrote it, and a rescan run
between the two is run again after the reload.

What the listing cannot tell is whether clamd has loaded the files yet: without a daily
database, run rescan after clamd's reload has finished (``sig reload`` then a scan that hits).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from avtool.engine import Engine
from avtool.engine.clamdconf import conf_for, running_clamd_confs
from avtool.errors import EngineError


@dataclass(frozen=True)
class Identity:
    """What the signatures are: VERSION of each clamd that answered, and the digest of each
    local DatabaseDirectory listing (None for a clamd that is not local)."""

    versions: tuple[str, ...]
    listings: tuple[str | None, ...]

    @property
    def digest(self) -> str:
        """Stored in the state: equal digests, same signatures."""
        h = hashlib.sha256()
        for version, listing in zip(self.versions, self.listings, strict=True):
            h.update(f"{version}\0{listing or ''}\n".encode())
        return h.hexdigest()[:32]

    @property
    def blind(self) -> bool:
        """A clamd that reports no database version and whose database dir cannot be read:
        new signatures in it go unseen."""
        return any(
            "/" not in version and listing is None
            for version, listing in zip(self.versions, self.listings, strict=True)
        )

    def describe(self) -> str:
        """``ClamAV 1.4.6/27000/...`` (+ ``db dir 1a2b3c4d``) for each clamd, for a person."""
        parts = []
        for version, listing in zip(self.versions, self.listings, strict=True):
            parts.append(f"{version} (db dir {listing[:8]})" if listing else version)
        return "; ".join(parts)


def current(engine: Engine) -> Identity:
    """The identity of the signatures of ``engine``'s clamds that answer VERSION. EngineError
    when none answers (nothing could be scanned anyway)."""
    versions: list[str] = []
    listings: list[str | None] = []
    confs = running_clamd_confs()
    reasons = []
    for backend in engine.backends:
        try:
            versions.append(backend.version())
        except EngineError as e:
            reasons.append(f"{backend.address}: {e}")
            continue
        conf = conf_for(backend.address, confs)
        listings.append(listing_digest(conf.db_dir) if conf is not None else None)
    if not versions:
        raise EngineError("cannot tell the signatures: no clamd answers: " + "; ".join(reasons))
    return Identity(tuple(versions), tuple(listings))


def listing_digest(db_dir: Path) -> str | None:
    """SHA-256 of the database files' names, sizes and mtimes (not their contents: a daily.cld
    is hundreds of MB); hidden files (temp copies) and subdirectories (freshclam's and clamd's
    temp dirs) are left out. None when the directory cannot be listed."""
    try:
        with os.scandir(db_dir) as entries:
            found = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}")
    except OSError:
        return None
    return hashlib.sha256("\n".join(sorted(found)).encode()).hexdigest()
