"""Every virus name in a message whose first name would let it through: a second look.

FILDES and INSTREAM answer with clamd's first match only (clamd(8): only ALLMATCHSCAN, by path,
goes on after a match; clamd 1.4 has no clamd.conf option for it: ``AllMatchScan yes`` is
refused as "Unknown option", measured). So when the first name leads to a weaker action than a
name could (``policy.hides``: a ``policy.pass`` glob, PUA or heuristics set to pass), a real
virus later in the same message would go unseen: measured with Debian's clamd, a message whose
first part matches a signature and whose second part is EICAR is answered with the first name
only, and so is a zip holding both.

The second look scans every leaf MIME part on its own, as ``scan --explain`` does
(avtool/scan/explain.py), and the members of zip archives among them (the stdlib opens them; two
levels deep), each through the same engine (FILDES on an anonymous memory file, INSTREAM over
TCP). The verdict carries every name found; policy then takes the most severe. A part that
could not be scanned makes the whole verdict Failed (defer): no proof that nothing hid there.
Heuristic alerts (Heuristics.Encrypted.*, Heuristics.Limits.Exceeded.*) hide nothing: clamd
reports them only at the end of a scan that found no signature (measured, with and without
HeuristicScanPrecedence), so Unchecked verdicts get no second look.

What it cannot split: two signatures in one file (a part, or an archive member), and archives
other than zip. ALLMATCHSCAN would, but it needs a path that clamd's user can read, which the
filter's spool file is not (design.md: no shared permissions; FILDES).

Only Infected messages that ``policy.hides`` picks pay for this: a stdlib MIME parse (about
4 ms a message, docs/notes/clamav.md section 4) and one clamd scan per part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from avtool.courier import archives
from avtool.engine import Engine, Failed, Infected, Unchecked, Verdict
from avtool.scan.explain import explain

ZIP_DEPTH = 2  # a zip in a part, and zips in that zip, opened by the stdlib
ZIP_MEMBERS = 256  # members looked at per message, at most
_ZIP = b"PK\x03\x04"


class _Incomplete(Exception):
    def __init__(self, verdict: Failed) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


def every_name(
    first: Infected, data: bytes, engine: Engine, *, deadline: float | None = None
) -> Verdict:
    """``first`` with every other name found in the parts of ``data`` (the whole message), or
    Failed when a part could not be scanned."""
    # members looked at, and bytes unpacked: a zip bomb or quine ends here
    left = [ZIP_MEMBERS, engine.max_size]

    def look(payload: bytes, depth: int) -> Verdict:
        if deadline is not None and time.monotonic() >= deadline:
            raise _Incomplete(Failed("timeout: deadline passed during the second look"))
        verdict = scan_bytes(engine, payload, deadline)
        if isinstance(verdict, Failed):
            raise _Incomplete(Failed(f"second look: {verdict.reason}", verdict.backend))
        if isinstance(verdict, Unchecked) or depth <= 0 or not payload.startswith(_ZIP):
            return verdict
        found = list(_names(verdict))
        for member in _zip_members(payload, left):
            found += _names(look(member, depth - 1))
        return Infected(tuple(dict.fromkeys(found)), verdict.backend) if found else verdict

    names = dict.fromkeys(first.names)
    try:
        for part in explain(data, lambda payload: look(payload, ZIP_DEPTH)):
            names.update(dict.fromkeys(part.names))
    except _Incomplete as e:
        return e.verdict
    return Infected(tuple(names), first.backend)


def scan_bytes(engine: Engine, data: bytes, deadline: float | None = None) -> Verdict:
    """``data`` scanned on its own: passed in an anonymous memory file (memfd_create(2)), the
    way ``avtool scan`` passes an mbox message, so FILDES needs no file clamd could read."""
    mem = os.memfd_create("avtool-part", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(mem, view) :]
        return engine.scan(mem, deadline=deadline)
    finally:
        os.close(mem)


def read_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of the file open on ``fd`` (preads: its offset left alone)."""
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _names(verdict: Verdict) -> tuple[str, ...]:
    return verdict.names if isinstance(verdict, Infected) else ()


def _zip_members(data: bytes, left: list[int]) -> Iterator[bytes]:
    """The members of the zip ``data`` that the stdlib can read (encrypted ones are clamd's:
    it calls them unchecked). ``left``: members and unpacked bytes still allowed, counted down
    (a member's declared size bounds what zipfile unpacks of it)."""
    try:
        archive, infos = archives.open_zip(data)
    except archives.Unreadable:
        return
    for info in infos:
        if left[0] <= 0 or info.file_size > left[1]:
            return
        left[0] -= 1
        left[1] -= info.file_size
        try:
            member = archive.read(info)
        except archives.BROKEN:
            continue
        yield member
