"""``avtool quarantine show``: one entry as text (envelope, verdict, header, MIME parts).

The parts that carry a signature are found as ``scan --explain`` finds them: each decoded leaf
scanned on its own by clamd (avtool/scan/explain.py). Without clamd the tree is still shown,
with the names from the filter's verdict for the message as a whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from avtool.quarantine.store import Entry, iso
from avtool.scan.explain import Scan, explain, structure
from avtool.scan.mailbox.message import printable

HEADER_LIMIT = 1 << 16


def render(entry: Entry, data: bytes, scan: Scan | None) -> Iterator[str]:
    """The lines ``show`` prints for ``entry`` whose message is ``data``."""
    received = iso(entry.received) or "-"
    yield f"id:         {entry.id}"
    yield f"received:   {received}"
    yield f"origin:     {entry.origin}"
    if entry.error:
        yield f"error:      {entry.error}"
    yield f"sender:     <{printable(entry.sender or '')}>"
    for r in entry.recipients:
        yield f"recipient:  <{printable(r)}>"
    yield f"verdict:    {entry.verdict or '-'} {' '.join(entry.names)}".rstrip()
    yield f"why:        {printable(entry.reason or '-')}"
    yield f"size:       {entry.size if entry.size is not None else len(data)}"
    yield ""
    head = data.split(b"\n\n", 1)[0][:HEADER_LIMIT]
    yield from (printable(line.decode("utf-8", "replace"), 998) for line in head.splitlines())
    yield ""
    yield "MIME structure:"
    carriers = {p.number: p.names for p in explain(data, scan)} if scan is not None else {}
    for number, ctype, filename in structure(data):
        name = f' "{filename}"' if filename else ""
        found = f"  <- {' '.join(carriers[number])}" if number in carriers else ""
        yield f"  {number:<8} {ctype}{name}{found}"
