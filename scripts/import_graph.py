"""Print proxy/'s import graph by layer, read from the real imports.

Each module sits one layer below the deepest module it imports, so every module imports only
from the layers above it; the graph has no cycles between files (tests/unit/test_layering.py),
so the layers are well defined. An import inside a function (done lazily, at first use) counts
like any other; one under ``if TYPE_CHECKING:`` does not, since it never runs.

    python scripts/import_graph.py            # the layers, for docs/architecture.md
    python scripts/import_graph.py --edges    # each module and what it imports

The emulator (proxy/emulator/) is shown as one node: only demo.py imports it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "proxy"
WIDTH = 96


def _name(path: Path) -> str:
    """``credentials/provider``, ``emulator`` (the whole package), ``app``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[0] == "emulator":
        return "emulator"
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "/".join(parts) or "__init__"


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.Module, known: set[str]) -> set[str]:
    """The proxy modules ``tree`` imports (``from proxy.x import y`` is proxy/x/y when that
    is a module, else proxy/x)."""
    found: set[str] = set()
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for target in targets:
            if not target.startswith("proxy."):
                continue
            parts = target.split(".")[1:]
            if parts[0] == "emulator":
                found.add("emulator")
                continue
            while parts and "/".join(parts) not in known:
                parts = parts[:-1]
            if parts:
                found.add("/".join(parts))
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    known = {_name(p) for p in files}
    edges: dict[str, set[str]] = {name: set() for name in known}
    for path in files:
        name = _name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges[name] |= _imported(tree, known) - {name}
    # A package's __init__ only re-exports; it is not a layer of its own.
    for package in ("credentials", "__init__", "__main__"):
        edges.pop(package, None)
    for deps in edges.values():
        deps -= {"credentials", "__init__", "__main__"}
    return edges


def layers(edges: dict[str, set[str]]) -> list[list[str]]:
    depth: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise SystemExit("import cycle: " + " -> ".join((*path, name)))
        if name not in depth:
            depth[name] = 1 + max((visit(d, (*path, name)) for d in edges[name]), default=-1)
        return depth[name]

    for name in edges:
        visit(name, ())
    out: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for name, level in depth.items():
        out[level].append(name)
    return [sorted(level) for level in out]


def _wrap(label: str, names: list[str]) -> list[str]:
    lines, line = [], label
    for name in names:
        piece = name if line == label else ", " + name
        if len(line) + len(piece) > WIDTH:
            lines.append(line + ",")
            line = " " * len(label) + name
        else:
            line += piece
    return [*lines, line]


def main(argv: list[str]) -> None:
    edges = graph()
    if "--edges" in argv:
        for name in sorted(edges):
            print(f"{name}: {', '.join(sorted(edges[name])) or '-'}")
        return
    for i, names in enumerate(layers(edges)):
        print("\n".join(_wrap(f"{i:>2}  ", names)))


if __name__ == "__main__":
    main(sys.argv[1:])
