"""The codebase stays ruff-clean (a failing lint fails CI like any test)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    proc = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _runtime_imports(path: Path) -> set[str]:
    """Modules a file imports when run (lazy imports too; `if TYPE_CHECKING:` blocks not)."""
    import ast

    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_layering() -> None:
    """core, formats and backend never import passes; the channel rules never import the
    analysis driver that runs them (one direction: channel_groups -> rules)."""
    low = [p for d in ("compress_ir/core", "compress_ir/formats", "compress_ir/backend")
           for p in (ROOT / d).rglob("*.py")]
    assert low
    for path in low:
        bad = {m for m in _runtime_imports(path) if m.startswith("compress_ir.passes")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for name in ("channel_rules", "shape_rules", "shape_values"):
        path = ROOT / "passes" / "analysis" / f"{name}.py"
        assert "compress_ir.passes.analysis.channel_groups" not in _runtime_imports(path), name
