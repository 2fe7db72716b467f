"""The layers hold (import-linter's contracts in pyproject.toml) and mypy --strict passes.

Both read the installed package: the README's install (``editable_mode=strict``) gives them a
link tree of exactly the package's files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_import_contracts_are_kept() -> None:
    done = run("lint-imports")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.slow
def test_mypy_strict_passes_on_the_installed_package() -> None:
    done = run("mypy")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success" in done.stdout


PACKAGE_DIRS = ("application", "domain", "entrypoints", "infrastructure", "projections")


def test_no_module_is_longer_than_400_lines_and_the_facade_is_thin() -> None:
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for folder in PACKAGE_DIRS
        for path in (ROOT / folder).rglob("*.py")
    }
    assert len(sizes) > 50 and "application/ledger.py" in sizes
    assert {name: n for name, n in sizes.items() if n > 400} == {}
    # The facade is the class ChatLedger (its one module: no mixins) over the unit of work.
    from chatledger import ChatLedger
    from chatledger.application.unit_of_work import UnitOfWork

    assert ChatLedger.__mro__[1] is UnitOfWork
    assert sizes["application/ledger.py"] <= 300


def test_no_test_compares_a_value_with_itself() -> None:
    """``assert f(x) == f(x)`` cannot fail: every comparison in the tests has two different sides."""
    import ast

    same = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                for op, left, right in zip(node.ops, sides[:-1], sides[1:], strict=True):
                    if not isinstance(op, ast.In | ast.NotIn) and ast.dump(left) == ast.dump(right):
                        same.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert same == []
