"""The Agents SDK adapter end to end: a scripted model (no network) holds a conversation
through chatledger, the visitor is away an hour, comes back to a fresh chatledger session
with the last one remembered, and ``chatledger audit verify`` passes on the store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from agents import Agent, Runner
from agents.testing import ScriptedModel
from chatledger import ChatLedger, ManualClock
from chatledger.adapters.agents import CLEARED, ChatLedgerSession
from chatledger.aio import AsyncChatLedger

from .thirdparty.agents._shim import get_text_message


@pytest.mark.asyncio
async def test_conversation_survives_an_hour_away_and_the_log_verifies(database_url: str) -> None:
    url = database_url  # a SQLite file, and PostgreSQL (marked postgres, so slow)
    clock = ManualClock()
    ledger = AsyncChatLedger(ChatLedger.open(url, clock=clock))
    try:
        session = ChatLedgerSession("conv-1", ledger)
        model = ScriptedModel()
        agent = Agent(name="bot", model=model)
        model.enqueue([get_text_message("Hello Ada")])
        await Runner.run(agent, "I am Ada", session=session)
        first = await ledger.current_session("agents:conv-1")
        assert first is not None

        clock.advance(hours=1)  # past the idle timeout
        model.enqueue([get_text_message("Still Ada")])
        result = await Runner.run(agent, "Who am I?", session=session)
        assert result.final_output == "Still Ada"
        # the model saw the last session's items: memory across the timeout
        seen = str(model.calls[-1].input)
        assert "I am Ada" in seen and "Hello Ada" in seen
        second = await ledger.current_session("agents:conv-1")
        assert second is not None and second.session_id != first.session_id
        assert second.is_returning and second.previous_session_id == first.session_id
        old = await ledger.session(first.session_id)
        assert old.status == "timed_out"

        popped = await session.pop_item()
        assert popped is not None and "Still Ada" in str(popped)
        assert "Still Ada" not in str(await session.get_items())
        await session.clear_session()
        assert await session.get_items() == []
        closed = await ledger.session(second.session_id)
        assert closed.close_reason == CLEARED
        # retracted and cleared items stay in the audited log
        texts = [m.text for m in closed.messages]
        assert "Still Ada" in texts and "(item retracted)" in texts
    finally:
        await ledger.aclose()

    verify = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "chatledger"), "audit", "verify", "--database", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
