"""Every path a docstring or comment cites resolves to a file in the repo.

Comments cite where a fact comes from ("docs/notes/courier.md §3", "tests/support/evasion.py
FRAGMENTS", "bench/faults.py saw it"); a citation that names a file outside the repo, or one that
a move left behind, sends the reader nowhere. The notes gathered for the project are kept in
docs/notes/ for this reason.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("avtool", "tests", "bench", "share")
# A repo-relative path: starts at a top-level folder (not in the middle of /usr/lib/... or of
# another path), ends in a word character (not the sentence's full stop).
CITATION = re.compile(r"(?<![\w/.~-])((?:avtool|tests|bench|share|docs|notes)/[\w./-]*\w)")
GENERATED = ("bench/out",)  # benchmark output, written by the runs (.gitignore)
BINARY = {".png", ".hdb", ".ndb", ".pyc"}


def citations(text: str) -> list[str]:
    return [m.group(1) for m in CITATION.finditer(text)]


def test_every_cited_path_is_in_the_repo() -> None:
    missing: list[str] = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix in BINARY or "__pycache__" in path.parts:
                continue
            if path == Path(__file__).resolve():
                continue  # its examples below are not citations
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for cited in citations(line):
                    if not cited.startswith(GENERATED) and not (ROOT / cited).exists():
                        missing.append(f"{path.relative_to(ROOT)}:{number}: {cited}")
    assert not missing, "\n".join(missing)


def test_the_notes_the_code_cites_are_in_docs() -> None:
    for name in ("courier.md", "clamav.md", "peers.md"):
        assert (ROOT / "docs" / "notes" / name).read_text().startswith("# ")


def test_what_counts_as_a_citation() -> None:
    text = (
        "(notes/courier.md §3); see docs/notes/clamav.md. /usr/lib/courier/filters/avtool "
        "and share/sudoers.avtool-sig, tests/support/ and ~/bench/x.py"
    )
    assert citations(text) == [
        "notes/courier.md",
        "docs/notes/clamav.md",
        "share/sudoers.avtool-sig",
        "tests/support",
    ]
