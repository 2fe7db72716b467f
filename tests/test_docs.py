"""Docs that describe code are checked against it."""

from __future__ import annotations

import re
from pathlib import Path

from chatledger import ChatLedger, ManualClock
from chatledger.domain.pydantic_aggregates import DomainEvent
from chatledger.domain.session import Session
from chatledger.domain.visitor import Visitor

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_event_class_is_in_the_catalogue() -> None:
    catalogue = (DOCS / "events.md").read_text()
    for aggregate in (Session, Visitor):
        for name, value in vars(aggregate).items():
            if isinstance(value, type) and issubclass(value, DomainEvent) and name not in ("Event", "MessageRecorded", "Created"):  # bases, never stored
                assert f"### {name}" in catalogue, f"{aggregate.__name__}.{name} missing from docs/events.md"


def test_readme_embedding_example_runs(tmp_path: Path, monkeypatch: object) -> None:
    code = re.search(r"## Embedding\n\n```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert code is not None
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)  # noqa: S102
    ledger = namespace["ledger"]
    assert isinstance(ledger, ChatLedger)
    assert (tmp_path / "chat.db").exists()
    ledger.close()


def test_api_doc_examples_run(tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "api.md").read_text(), re.DOTALL)
    assert blocks
    namespace: dict[str, object] = {"ManualClock": ManualClock}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102
    for value in namespace.values():
        if isinstance(value, ChatLedger):
            value.close()
