"""The names test_session.py (restating the Agents SDK's session tests) imports, on chatledger.

``SQLiteSession(session_id, db_path, session_settings=...)`` returns a
:class:`~chatledger.adapters.agents.ChatLedgerSession` on an :class:`AsyncChatLedger` opened
on that SQLite file (one ledger per file, closed at the end of the test by conftest.py).
``get_text_message(text)``: a completed assistant output message holding ``text``, the shape
of model output the SDK's tests script (chatledger's own code).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from agents.memory.session_settings import SessionSettings
from chatledger import ChatLedger
from chatledger.adapters.agents import ChatLedgerSession
from chatledger.aio import AsyncChatLedger
from openai.types.responses import ResponseOutputItem, ResponseOutputMessage, ResponseOutputText

OPEN: dict[str, AsyncChatLedger] = {}


def SQLiteSession(
    session_id: str,
    db_path: str | Path = ":memory:",
    session_settings: SessionSettings | dict[str, Any] | None = None,
    **_: Any,
) -> ChatLedgerSession:
    if str(db_path) == ":memory:":  # a database of its own, as SQLite's :memory: is
        db_path = Path(tempfile.mkdtemp()) / "memory.db"
    key = str(Path(db_path).resolve())
    ledger = OPEN.get(key)
    if ledger is None:
        ledger = OPEN[key] = AsyncChatLedger(ChatLedger.open(f"sqlite:///{key}"))
    return ChatLedgerSession(session_id, ledger, session_settings=session_settings)


def close_all() -> None:
    for ledger in OPEN.values():
        ledger.sync.close()
    OPEN.clear()


def get_text_message(text: str) -> ResponseOutputItem:
    part = ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])
    return ResponseOutputMessage(
        type="message", id="msg-1", role="assistant", status="completed", content=[part]
    )
