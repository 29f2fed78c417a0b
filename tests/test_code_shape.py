"""Size limits of the source: no module of src/ over 600 lines, no function over 80 lines.

Past these sizes a module holds several concerns and a function several steps; split them
(vpeft.report.collect and vpeft.analysis were split for this)."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_module_over_600_lines() -> None:
    long = [f"{path.relative_to(SRC)}: {n} lines" for path in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n  " + "\n  ".join(long)


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, int]]:
    """(qualified name, lines from ``def`` to the last line) of every function, nested ones too."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((prefix + node.name, node.end_lineno - node.lineno + 1))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found += _functions(node, f"{prefix}{node.name}.")
    return found


def test_no_function_over_80_lines() -> None:
    long = [f"{path.relative_to(SRC)}: {name} ({n} lines)" for path in _modules()
            for name, n in _functions(ast.parse(path.read_text(encoding="utf-8")))
            if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n  " + "\n  ".join(long)


def test_the_limits_are_seen() -> None:
    """The walk finds nested functions and methods, and counts from ``def`` to the end."""
    code = "class A:\n    def f(self):\n        def g():\n            pass\n        return g\n"
    assert _functions(ast.parse(code)) == [("A.f", 4), ("A.f.g", 2)]
    assert len(_modules()) > 50
