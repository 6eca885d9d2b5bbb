"""The import rules of docs/architecture.md ("Import rules"), checked from each module's
imports; and every docs/ page a comment cites exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "proxy"
RULES = "see docs/architecture.md, Import rules"


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules() -> dict[str, set[str]]:
    return {str(p.relative_to(PACKAGE)): imports(p) for p in PACKAGE.rglob("*.py")}


def test_credentials_never_import_the_web_framework() -> None:
    for name, found in modules().items():
        if name.startswith("credentials/"):
            assert not any(
                m.startswith(("starlette", "uvicorn", "aiohttp", "proxy.forwarding", "proxy.app"))
                for m in found
            ), f"{name}: credentials/ never imports the web side ({RULES})"


def test_rewrite_uses_only_the_standard_library() -> None:
    found = modules()["rewrite.py"]
    assert all(m in {"__future__", "collections.abc", "dataclasses"} for m in found), (
        f"rewrite.py imports {sorted(found)}: standard library only ({RULES})"
    )


def test_only_the_process_runners_import_uvicorn() -> None:
    for name, found in modules().items():
        if name not in ("demo.py", "listener.py", "server.py", "websocket_listener.py"):
            assert not any(m.startswith("uvicorn") for m in found), (
                f"{name}: only the process runners import uvicorn ({RULES})"
            )


def test_the_emulator_is_never_imported_by_the_proxy_itself() -> None:
    """Only the demo command (and tests) may use the emulator."""
    for name, found in modules().items():
        if not name.startswith("emulator/") and name != "demo.py":
            assert not any(m.startswith("proxy.emulator") for m in found), (
                f"{name}: only demo.py uses the emulator ({RULES})"
            )


def test_only_settings_reads_the_environment() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.name != "settings.py":
            text = path.read_text()
            assert "os.environ" not in text, (
                f"{path}: only settings.py reads the environment ({RULES})"
            )
            assert "getenv" not in text, f"{path}: only settings.py reads the environment ({RULES})"


def test_no_module_level_mutable_state() -> None:
    """Module-level names are constants, functions, classes or loggers: no runtime state."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if all(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                    continue
                value = node.value
                assert not isinstance(value, ast.List | ast.Dict | ast.Set), (
                    f"{path.name}:{node.lineno}"
                )
                if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
                    assert value.func.id not in {"list", "dict", "set"}, (
                        f"{path.name}:{node.lineno}"
                    )


def test_no_utils_module() -> None:
    assert not [
        p for p in PACKAGE.rglob("*.py") if p.stem in {"utils", "helpers", "misc", "common"}
    ]


def test_every_cited_document_exists() -> None:
    """Comments cite docs/*.md for the reasons behind the code; a citation of a page that does
    not exist (renamed, never written) leaves the next maintainer with nothing to read."""
    cited = re.compile(r"docs/([A-Za-z0-9_-]+\.md)")
    missing = sorted(
        f"{path.relative_to(ROOT)}: docs/{name}"
        for tree in ("proxy", "tests")
        for path in (ROOT / tree).rglob("*.py")
        for name in set(cited.findall(path.read_text(encoding="utf-8")))
        if not (ROOT / "docs" / name).is_file()
    )
    assert not missing, "cited but not in docs/:\n" + "\n".join(missing)


# Past this a module holds more than one concept and is split by concept (docs/architecture.md,
# "Import rules", module size); ~300 lines is the aim, this is the hard limit.
MODULE_LINE_LIMIT = 400


def test_every_module_is_within_the_size_budget() -> None:
    over = sorted(
        f"{path.relative_to(ROOT)}: {lines} lines"
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MODULE_LINE_LIMIT
    )
    assert not over, f"over {MODULE_LINE_LIMIT} lines, split by concept:\n" + "\n".join(over)


def test_the_import_graph_in_the_docs_is_the_real_one() -> None:
    """docs/architecture.md shows the layers scripts/import_graph.py prints from the imports;
    a move of code that changes them must change the drawing too."""
    printed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "import_graph.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip("\n")
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Import graph") :]
    drawn = section.split("```")[1].strip("\n")
    assert drawn == printed, "run scripts/import_graph.py and paste its output in the docs"
