"""The application layer's shape: a facade over use cases that share a unit of work.

Use-case modules never import the facade (so there is no import cycle to dodge with an import
inside a function), and no module of ``application/`` imports another's private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

APPLICATION = Path(__file__).resolve().parents[1] / "application"
# aio: the async facade, a wrapper of the facade (no use case imports it either).
FACADE = {"ledger", "aio", "__init__", "__main__"}


def imports(path: Path) -> list[tuple[ast.ImportFrom | ast.Import, bool]]:
    """Every import of ``path``, and whether it sits inside a function."""
    found: list[tuple[ast.ImportFrom | ast.Import, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, in_function))
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def own_module(node: ast.ImportFrom) -> str | None:
    """The application module a ``from ... import`` names, if it is one of ours."""
    if node.level == 1:
        return (node.module or "").split(".")[0] or None
    module = node.module or ""
    if module.startswith("chatledger.") and (APPLICATION / f"{module.split('.')[1]}.py").exists():
        return module.split(".")[1]
    return None


def test_no_application_module_imports_a_private_name_of_another() -> None:
    for path in sorted(APPLICATION.glob("*.py")):
        for node, _ in imports(path):
            if isinstance(node, ast.ImportFrom) and own_module(node) is not None:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_no_import_inside_a_function_in_application() -> None:
    for path in sorted(APPLICATION.glob("*.py")):
        inside = [n.lineno for n, in_function in imports(path) if in_function]
        assert not inside, f"{path.name} imports inside a function at lines {inside}"


def test_use_cases_never_import_the_facade() -> None:
    for path in sorted(APPLICATION.glob("*.py")):
        if path.stem in FACADE:
            continue
        for node, _ in imports(path):
            if isinstance(node, ast.ImportFrom):
                target = own_module(node)
                names = {a.name for a in node.names} if node.level == 1 and not node.module else set()
                assert target not in FACADE and not names & FACADE, (
                    f"{path.name} imports the facade ({node.module or names})"
                )
