"""The ADK adapter end to end: an ADK agent with a scripted model (no network) holds a
conversation through chatledger, the visitor is away an hour, comes back to a fresh chatledger
session with the last one remembered, and ``chatledger audit verify`` passes on the store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from chatledger import ChatLedger, ManualClock
from chatledger.adapters.adk import DELETED, NEW_SESSION, ChatLedgerSessionService, session_visitor
from chatledger.aio import AsyncChatLedger
from google.adk.agents.llm_agent import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.genai import types


class ScriptedLlm(BaseLlm):
    """Answers each call with the next scripted text and keeps what it was shown."""

    model: str = "scripted"
    replies: list[str] = []
    seen: list[str] = []

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        self.seen.append(" ".join(
            p.text for c in llm_request.contents for p in (c.parts or []) if p.text
        ))
        text = self.replies.pop(0)
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))


async def _say(runner: Runner, text: str) -> list[Any]:
    message = types.Content(role="user", parts=[types.Part(text=text)])
    return [e async for e in runner.run_async(user_id="ada", session_id="s1", new_message=message)]


@pytest.mark.slow  # a console-script subprocess; the fast loop has the idle-gap case below
@pytest.mark.asyncio
async def test_agent_conversation_survives_an_hour_away_and_the_log_verifies(
    database_url: str,
) -> None:
    clock = ManualClock()
    ledger = AsyncChatLedger(ChatLedger.open(database_url, clock=clock))
    try:
        service = ChatLedgerSessionService(ledger)
        model = ScriptedLlm(replies=["Hello Ada", "You are Ada"], seen=[])
        agent = LlmAgent(name="bot", model=model, instruction="Be brief.")
        runner = Runner(app_name="shop", agent=agent, session_service=service)
        await service.create_session(app_name="shop", user_id="ada", session_id="s1",
                                     state={"user:name": "Ada"})
        await _say(runner, "I am Ada")
        led = await ledger.tenant("shop")
        visitor = session_visitor("ada", "s1")
        first = await led.current_session(visitor)
        assert first is not None

        clock.advance(hours=1)  # past the idle timeout
        events = await _say(runner, "Who am I?")
        assert events[-1].content.parts[0].text == "You are Ada"
        assert "I am Ada" in model.seen[-1] and "Hello Ada" in model.seen[-1]  # memory
        second = await led.current_session(visitor)
        assert second is not None and second.session_id != first.session_id
        assert second.is_returning and second.previous_session_id == first.session_id
        assert (await led.session(first.session_id)).status == "timed_out"

        got = await service.get_session(app_name="shop", user_id="ada", session_id="s1")
        assert got is not None
        assert [e.author for e in got.events] == ["user", "bot", "user", "bot"]
        assert got.state == {"user:name": "Ada"}  # temp:chatledger.new_session is not stored
        assert NEW_SESSION not in got.state
        assert (await led.visitor(visitor)).user_id == "ada"  # linked: erasure by user reaches it

        await service.delete_session(app_name="shop", user_id="ada", session_id="s1")
        assert await service.get_session(app_name="shop", user_id="ada", session_id="s1") is None
        closed = await led.session(second.session_id)
        assert closed.close_reason == DELETED
        assert "You are Ada" in [m.text for m in closed.messages]  # kept in the audited log
    finally:
        await ledger.aclose()

    verify = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "chatledger"), "audit", "verify", "--database",
         database_url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.asyncio
async def test_a_user_event_after_the_idle_gap_is_signalled_to_the_invocation(sqlite_url: str) -> None:
    from google.adk.events.event import Event

    clock = ManualClock()
    async with AsyncChatLedger(ChatLedger.open(sqlite_url, clock=clock)) as ledger:
        service = ChatLedgerSessionService(ledger)
        session = await service.create_session(app_name="shop", user_id="ada")
        await service.append_event(session, Event(author="user"))
        assert NEW_SESSION not in session.state
        clock.advance(hours=1)
        await service.append_event(session, Event(author="user"))
        assert session.state[NEW_SESSION] is True
        got = await service.get_session(app_name="shop", user_id="ada", session_id=session.id)
        assert got is not None and len(got.events) == 2 and NEW_SESSION not in got.state


@pytest.mark.asyncio
async def test_a_deleted_id_can_be_created_again_and_erasing_the_user_forgets_them(
    sqlite_url: str,
) -> None:
    from google.adk.events.event import Event
    from google.adk.events.event_actions import EventActions

    async with AsyncChatLedger.open(sqlite_url) as ledger:
        service = ChatLedgerSessionService(ledger)
        old = await service.create_session(app_name="shop", user_id="ada", session_id="s1",
                                           state={"k": 1})
        await service.append_event(old, Event(author="user"))
        await service.delete_session(app_name="shop", user_id="ada", session_id="s1")
        again = await service.create_session(app_name="shop", user_id="ada", session_id="s1")
        assert again.state == {} and again.events == []
        await service.append_event(again, Event(
            author="user", actions=EventActions(state_delta={"user:likes": "tea", "k": 2})))
        got = await service.get_session(app_name="shop", user_id="ada", session_id="s1")
        assert got is not None and len(got.events) == 1 and got.state == {"k": 2, "user:likes": "tea"}
        listed = await service.list_sessions(app_name="shop", user_id="ada")
        assert [s.id for s in listed.sessions] == ["s1"]

        await (await ledger.tenant("shop")).erase(user_id="ada")
        assert await service.get_session(app_name="shop", user_id="ada", session_id="s1") is None
        assert await service.get_user_state(app_name="shop", user_id="ada") == {}
        assert (await service.list_sessions(app_name="shop", user_id="ada")).sessions == []
