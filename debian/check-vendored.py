#!/usr/bin/python3
"""Build-time check (debian/rules): the private library dir holds avtool and exactly the pinned
libraries of debian/requirements.txt, and debian/copyright covers each of them.

    check-vendored.py LIBDIR REQUIREMENTS COPYRIGHT
"""

import re
import sys
from pathlib import Path


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def main(libdir: str, requirements: str, copyright_file: str) -> int:
    wanted: dict[str, str | None] = {"avtool": None}
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            wanted[normal(name)] = version.strip()
    found: dict[str, tuple[str, str]] = {}  # name -> (version, dist-info stem)
    for info in Path(libdir).glob("*.dist-info"):
        meta = (info / "METADATA").read_text(encoding="utf-8")
        fields = dict(re.findall(r"^(Name|Version): *(.+?) *$", meta, re.M))
        found[normal(fields["Name"])] = (fields["Version"], info.name.split("-")[0])
    problems = []
    for name in sorted(set(found) - set(wanted)):
        problems.append(f"{name} {found[name][0]} is installed but not pinned")
    for name in sorted(set(wanted) - set(found)):
        problems.append(f"{name} is pinned but not installed")
    copyright_text = Path(copyright_file).read_text()
    for name, (version, stem) in sorted(found.items()):
        if wanted.get(name) not in (None, version):
            problems.append(f"{name}: {version} installed, {wanted[name]} pinned")
        if name != "avtool" and f"usr/lib/avtool/python/{stem}-*.dist-info/*" not in copyright_text:
            problems.append(f"{name}: no Files: stanza for {stem}-*.dist-info in {copyright_file}")
    for p in problems:
        print(f"check-vendored: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
