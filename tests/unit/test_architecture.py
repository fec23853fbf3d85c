"""The measures of the house (issue 16), checked on the source so that they keep holding.

- No import cycle among avtool's modules. Every import statement counts, wherever it sits: at the
  top, inside ``if TYPE_CHECKING:``, inside a function (a lazy import hides a cycle from Python,
  not from a reader). A package's ``__init__`` is a module like any other: ``from avtool.doctor
  import Finding`` is an edge to ``avtool.doctor``, ``from avtool.doctor import clamd`` an edge to
  ``avtool.doctor.clamd``. A submodule's implicit import of its parent package is not counted
  (else every package whose ``__init__`` re-exports its submodules would be a cycle).
- At most 8 modules flat at ``avtool/``'s top level.
- No module over 450 lines.
- No function over 60 lines unless its docstring gives a reason: a line that starts with
  ``Long:`` and says why (``Long: one table of every signal, reads best in one place``). A
  function's length is its body without the docstring, from the first statement to the last line
  (a command's docstring is its ``--help``, and a reason must not cost the lines it excuses).

Known exceptions would sit in ``KNOWN`` below, each with the owner who removes it (there are
none). The test fails on a violation that is not listed, and on a listed one that no longer
occurs: the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "avtool"

MAX_TOP_LEVEL = 8
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
REASON = re.compile(r"^\s*Long: \S.{9,}", re.M)  # the marker and at least ten characters of why

# The one allow-list: today's violations, each with its owner. Remove a line when it is fixed.
KNOWN: frozenset[str] = frozenset()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The avtool modules that ``name`` (at ``path``) imports, by any statement anywhere."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    found.add(f"{source}.{alias.name}")
                elif source in known:
                    found.add(source)
    found.discard(name)  # ``from . import x`` inside x's own package __init__ is not a cycle
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted."""
    reach = {node: reachable(graph, node) for node in graph}
    groups = {
        tuple(sorted({node} | {other for other in reach[node] if node in reach[other]}))
        for node in graph
        if node in reach[node]
    }
    return sorted(list(group) for group in groups)


def long_functions(path: Path) -> Iterator[tuple[str, int, str]]:
    """(qualified name, body lines, docstring) of every function, nested ones included."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, int, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qualified = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    docstring = ast.get_docstring(child) or ""
                    body = child.body[1:] if docstring and len(child.body) > 1 else child.body
                    assert child.end_lineno is not None
                    yield qualified, child.end_lineno - body[0].lineno + 1, docstring
                yield from walk(child, f"{qualified}.")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(), str(path)), "")


def violations() -> dict[str, str]:
    """Each violation of the measures: its key (as KNOWN spells it) and a line of detail."""
    found: dict[str, str] = {}
    graph = import_graph()
    for group in cycles(graph):
        edges = [f"{a} -> {b}" for a in group for b in sorted(graph[a]) if b in group]
        found[f"import cycle: {', '.join(group)}"] = "; ".join(edges)
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    if len(top) > MAX_TOP_LEVEL:
        found[f"over {MAX_TOP_LEVEL} top-level modules"] = ", ".join(top)
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            found[f"module over {MAX_MODULE_LINES} lines: {relative}"] = f"{lines} lines"
        for qualified, length, docstring in long_functions(path):
            if length > MAX_FUNCTION_LINES and not REASON.search(docstring):
                key = f"function over {MAX_FUNCTION_LINES} lines without a reason"
                found[f"{key}: {relative}:{qualified}"] = f"{length} lines"
    return found


def test_the_measures_hold_except_the_known_exceptions() -> None:
    found = violations()
    new = {key: detail for key, detail in found.items() if key not in KNOWN}
    assert not new, "\n".join(f"{key} ({detail})" for key, detail in sorted(new.items()))


def test_every_known_exception_still_occurs() -> None:
    """A fixed exception leaves the list, so that the list only shrinks."""
    gone = sorted(KNOWN - violations().keys())
    assert not gone, "fixed, remove from KNOWN: " + "; ".join(gone)


# The checker itself, on small made-up trees: a measure that cannot fail measures nothing.


def write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(root.rglob("*.py"))
    }


def test_cycles_count_type_checking_lazy_and_package_imports(tmp_path: Path) -> None:
    known = write(
        tmp_path,
        {
            "pkg/__init__.py": "def run():\n    from pkg import sub\n",
            "pkg/sub.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg\n",
            "pkg/leaf.py": "from . import sub\nfrom .sub import x\n",
            "pkg/inner/__init__.py": "from . import a\n",
            "pkg/inner/a.py": "from ..leaf import y\n",
        },
    )
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert graph["pkg"] == {"pkg.sub"}
    assert graph["pkg.sub"] == {"pkg"}
    assert graph["pkg.leaf"] == {"pkg.sub"}
    assert graph["pkg.inner"] == {"pkg.inner.a"}
    assert graph["pkg.inner.a"] == {"pkg.leaf"}
    assert cycles(graph) == [["pkg", "pkg.sub"]]


def test_long_functions_are_measured_without_their_docstring(tmp_path: Path) -> None:
    body = "    x = 1\n" * 61
    path = tmp_path / "m.py"
    path.write_text(
        f'def long():\n{body}\n\nclass C:\n    def short(self):\n        """Doc.\n\n"""\n'
        f"{'        x = 1' + chr(10)}"
    )
    assert [(name, n) for name, n, _ in long_functions(path)] == [("long", 61), ("C.short", 1)]
    assert REASON.search('Why.\n\nLong: one table, reads best in one place."""')
    assert not REASON.search("Long:")
