"""The public surface is deliberate: ``__all__`` is locked, the domain stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import chatledger

ROOT = Path(__file__).resolve().parents[1]


def test_exported_members_are_sorted_and_complete() -> None:
    assert chatledger.__all__ == sorted(chatledger.__all__)
    for name in chatledger.__all__:
        assert hasattr(chatledger, name), name
    public = {n for n in dir(chatledger) if not n.startswith("_")}
    modules = {"aio", "application", "domain", "entrypoints", "infrastructure", "projections"}
    assert public - modules - set(chatledger.__all__) == set()


def test_every_error_is_a_chatledger_error() -> None:
    from chatledger.application import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), chatledger.ChatLedgerError)


def test_domain_imports_no_infrastructure() -> None:
    import sys

    allowed_roots = set(sys.stdlib_module_names) | {"__future__", "pydantic", "typing_extensions"}
    for path in (ROOT / "domain").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: stays inside domain/
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in allowed_roots or name == "eventsourcing.domain", f"{path.name} imports {name}"


def test_the_package_is_installed_under_chatledger_not_as_top_level_modules(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = (
        "import importlib.util, chatledger.domain, chatledger.infrastructure, chatledger.projections;"
        "print([importlib.util.find_spec(n) is None for n in ('domain','infrastructure','projections','application')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[True, True, True, True]"


def test_renamed_public_names_of_released_versions_still_work_and_warn(tmp_path: Path) -> None:
    from datetime import timedelta

    import pytest
    from chatledger import ChatLedger, ManualClock, SessionTimedOutError

    with pytest.warns(DeprecationWarning, match="SessionExpiredError is deprecated; use SessionTimedOutError"):
        from chatledger import SessionExpiredError
    assert SessionExpiredError is SessionTimedOutError
    with pytest.warns(DeprecationWarning, match="SessionExpiredError"):
        assert chatledger.application.errors.SessionExpiredError is SessionTimedOutError
    with pytest.raises(AttributeError, match="module 'chatledger' has no attribute 'SessionGoneError'"):
        chatledger.SessionGoneError  # noqa: B018
    clock = ManualClock()
    with ChatLedger.open(f"sqlite:///{tmp_path}/chat.db", clock=clock) as ledger:
        sid = ledger.receive("v-1", "hello").session_id
        later = clock() + timedelta(hours=1)
        with pytest.warns(DeprecationWarning, match=r"expire_if_idle\(\) is deprecated; use time_out_if_idle"):
            assert ledger.expire_if_idle(sid, now=later) is True
        assert ledger.session(sid).status == "timed_out"
        assert ledger.time_out_if_idle(sid, now=later) is False  # once
        with pytest.raises(SessionTimedOutError) as info:
            ledger.reply(ledger.receive("v-2", "hi").session_id, "x", at=later)
        with pytest.warns(DeprecationWarning, match="use timed_out_at"):
            assert info.value.expired_at == info.value.timed_out_at == clock() + timedelta(minutes=30)


def test_the_command_line_starts_without_loading_the_store(tmp_path: Path) -> None:
    """``import chatledger`` is lazy and the CLI imports the store only in the commands that
    open it: ``--version``, ``--help`` and usage errors load no database or crypto code."""
    import subprocess
    import sys

    probe = (
        "import sys, chatledger, chatledger.entrypoints.cli;"
        "print(sorted(m for m in ('chatledger.application.ledger', 'sqlalchemy', 'eventsourcing',"
        " 'cryptography') if m in sys.modules));"
        "print(chatledger.ChatLedger.__name__, 'chatledger.application.ledger' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["[]", "ChatLedger True"]
