"""ADK's session-service contract, held against ChatLedgerSessionService (SQLite, PostgreSQL).

Each test restates one case of ADK's shared contract suite (google/adk-python,
tests/unittests/sessions/test_session_service.py at commit 11cc0931 — every test there that
takes the ``session_service`` fixture — plus the DatabaseSessionService cases about deleted
and stale sessions and tied timestamps, which state behaviour a durable backend owes) under
the same name, written for chatledger rather than vendored: see _conformance.py. A case the
model cannot meet goes in the backend's ``divergences`` (strict xfail, with the reason).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig
from google.adk.tools.tool_confirmation import ToolConfirmation
from google.genai import types

from . import _conformance
from ._conformance import _postgres_store, session_service  # noqa: F401

pytestmark = pytest.mark.asyncio
APP = "my_app"


async def test_recorded_divergences_name_a_contract_test() -> None:
    for backend in _conformance.BACKENDS:
        for name in backend.divergences:
            found = globals().get(name)
            assert found is not None, f"{backend.name}: {name} is not a test here"
            assert "session_service" in inspect.signature(found).parameters


def _event(author: str = "user", delta: dict[str, Any] | None = None, **kw: Any) -> Event:
    actions = EventActions(state_delta=delta) if delta is not None else None
    return Event(invocation_id=kw.pop("invocation_id", "inv"), author=author,
                 **({"actions": actions} if actions else {}), **kw)


async def test_get_empty_session(session_service: BaseSessionService) -> None:
    assert await session_service.get_session(app_name=APP, user_id="u", session_id="123") is None


async def test_create_get_session(session_service: BaseSessionService) -> None:
    created = await session_service.create_session(app_name=APP, user_id="u", state={"k": "v"})
    assert (created.app_name, created.user_id, created.state) == (APP, "u", {"k": "v"})
    assert created.id and created.last_update_time <= time.time()
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=created.id)
    assert got == created
    await session_service.delete_session(app_name=APP, user_id="u", session_id=created.id)
    assert await session_service.get_session(app_name=APP, user_id="u", session_id=created.id) is None


async def test_create_and_list_sessions(session_service: BaseSessionService) -> None:
    ids = [f"session{i}" for i in range(5)]
    for sid in ids:
        await session_service.create_session(app_name=APP, user_id="u", session_id=sid,
                                             state={"key": "value" + sid})
    listed = (await session_service.list_sessions(app_name=APP, user_id="u")).sessions
    assert {s.id for s in listed} == set(ids) and len(listed) == 5
    assert all(s.state == {"key": "value" + s.id} for s in listed)


async def test_list_sessions_ordered_by_last_update_time(session_service: BaseSessionService) -> None:
    for sid in "abc":
        await session_service.create_session(app_name=APP, user_id="u", session_id=sid)
    a = await session_service.get_session(app_name=APP, user_id="u", session_id="a")
    assert a is not None
    await asyncio.sleep(0.01)
    await session_service.append_event(a, _event())
    listed = (await session_service.list_sessions(app_name=APP, user_id="u")).sessions
    assert [s.id for s in listed] == ["b", "c", "a"]


async def test_list_sessions_all_users(session_service: BaseSessionService) -> None:
    for uid, sid in (("user1", "session1a"), ("user1", "session1b"), ("user2", "session2a")):
        await session_service.create_session(app_name=APP, user_id=uid, session_id=sid,
                                             state={"key": "v" + sid})
    one = (await session_service.list_sessions(app_name=APP, user_id="user1")).sessions
    assert {s.id: s.state for s in one} == {"session1a": {"key": "vsession1a"},
                                            "session1b": {"key": "vsession1b"}}
    two = (await session_service.list_sessions(app_name=APP, user_id="user2")).sessions
    assert [(s.id, s.state) for s in two] == [("session2a", {"key": "vsession2a"})]
    every = (await session_service.list_sessions(app_name=APP, user_id=None)).sessions
    assert {s.id for s in every} == {"session1a", "session1b", "session2a"}
    assert all(not s.events for s in every)


async def test_app_state_is_shared_by_all_users_of_app(session_service: BaseSessionService) -> None:
    s1 = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1",
                                              state={"app:k1": "v1"})
    await session_service.append_event(s1, _event(delta={"app:k2": "v2"}))
    s2 = await session_service.create_session(app_name=APP, user_id="u2", session_id="s2")
    assert s2.state == {"app:k1": "v1", "app:k2": "v2"}
    again = await session_service.get_session(app_name=APP, user_id="u1", session_id="s1")
    assert again is not None and again.state["app:k2"] == "v2"


async def test_user_state_is_shared_only_by_user_sessions(session_service: BaseSessionService) -> None:
    s1 = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1",
                                              state={"user:k1": "v1"})
    await session_service.append_event(s1, _event(delta={"user:k2": "v2"}))
    s1b = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1b")
    assert s1b.state == {"user:k1": "v1", "user:k2": "v2"}
    s2 = await session_service.create_session(app_name=APP, user_id="u2", session_id="s2")
    assert s2.state == {}


async def test_session_state_is_not_shared(session_service: BaseSessionService) -> None:
    s1 = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1",
                                              state={"sk1": "v1"})
    await session_service.append_event(s1, _event(delta={"sk2": "v2"}))
    got = await session_service.get_session(app_name=APP, user_id="u1", session_id="s1")
    assert got is not None and got.state == {"sk1": "v1", "sk2": "v2"}
    s1b = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1b")
    assert s1b.state == {}


@pytest.mark.parametrize(
    ("initial", "delta", "expected"),
    [
        ({"profile": {"name": "ada", "role": "admin"}}, {"profile": {"name": "bob"}},
         {"profile": {"name": "bob"}}),  # replaced, not deep-merged
        ({"flag": True}, {"flag": None}, {"flag": None}),  # null stored, key kept
        ({"flag": False}, {"new_flag": True}, {"flag": False, "new_flag": True}),
    ],
    ids=["dict_replaces", "none_stored", "bool_survives"],
)
async def test_state_delta_values_round_trip(
    session_service: BaseSessionService, initial: dict[str, Any], delta: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    """ADK's test_dict_valued_state_delta_replaces_stored_value,
    test_none_valued_state_delta_is_stored_not_dropped, test_boolean_state_survives_unrelated_state_delta."""
    session = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1",
                                                   state=initial)
    await session_service.append_event(session, _event(delta=delta))
    reloaded = await session_service.get_session(app_name=APP, user_id="u1", session_id="s1")
    assert reloaded is not None and reloaded.state == expected and session.state == expected


async def test_app_state_dict_valued_delta_replaces_stored_value(
    session_service: BaseSessionService,
) -> None:
    s1 = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1",
                                              state={"app:cfg": {"name": "ada", "role": "admin"}})
    await session_service.append_event(s1, _event(delta={"app:cfg": {"name": "bob"}}))
    s2 = await session_service.create_session(app_name=APP, user_id="u2", session_id="s2")
    assert s2.state["app:cfg"] == {"name": "bob"} and s1.state["app:cfg"] == {"name": "bob"}


async def test_user_state_none_valued_delta_is_stored_not_dropped(
    session_service: BaseSessionService,
) -> None:
    s1 = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1",
                                              state={"user:pref": "dark"})
    await session_service.append_event(s1, _event(delta={"user:pref": None}))
    s1b = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1b")
    assert "user:pref" in s1b.state and s1b.state["user:pref"] is None


async def test_temp_state_is_not_persisted_in_state_or_events(
    session_service: BaseSessionService,
) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1")
    event = _event(author="agent1", delta={"temp:k1": "v1", "sk": "v2"})
    await session_service.append_event(session, event)
    assert session.state["temp:k1"] == "v1" and session.state["sk"] == "v2"  # this invocation
    assert event.actions.state_delta == {"sk": "v2"}
    got = await session_service.get_session(app_name=APP, user_id="u1", session_id="s1")
    assert got is not None and got.state == {"sk": "v2"}
    assert got.events[0].actions.state_delta == {"sk": "v2"}


async def test_temp_state_visible_across_sequential_events(
    session_service: BaseSessionService,
) -> None:
    """One agent's temp: output is readable by the next agent of the same invocation (on the
    session object in hand), while neither the stored event nor a reload carries it."""
    session = await session_service.create_session(app_name=APP, user_id="u1", session_id="seq")
    first = _event(author="agent1", delta={"temp:output": "from agent1"})
    await session_service.append_event(session, first)
    assert session.state["temp:output"] == "from agent1"
    assert "temp:output" not in first.actions.state_delta
    second = _event(author="agent2", delta={"seen": session.state["temp:output"]})
    await session_service.append_event(session, second)
    got = await session_service.get_session(app_name=APP, user_id="u1", session_id="seq")
    assert got is not None and got.state == {"seen": "from agent1"}


async def test_get_session_respects_user_id(session_service: BaseSessionService) -> None:
    s1 = await session_service.create_session(app_name=APP, user_id="u1", session_id="s1")
    await session_service.append_event(s1, _event())
    await session_service.create_session(app_name=APP, user_id="u2", session_id="s1")
    got = await session_service.get_session(app_name=APP, user_id="u2", session_id="s1")
    assert got is not None and got.user_id == "u2" and got.events == []


async def test_create_session_with_existing_id_raises_error(
    session_service: BaseSessionService,
) -> None:
    await session_service.create_session(app_name=APP, user_id="u", session_id="existing")
    with pytest.raises(AlreadyExistsError):
        await session_service.create_session(app_name=APP, user_id="u", session_id="existing")
    with pytest.raises(AlreadyExistsError):  # ids are stripped (ADK's in-memory service)
        await session_service.create_session(app_name=APP, user_id="u", session_id="  existing ")


async def test_padded_session_id_reads_and_deletes(session_service: BaseSessionService) -> None:
    created = await session_service.create_session(app_name=APP, user_id="u",
                                                   session_id="order-42\n", state={"cart": "book"})
    assert created.id == "order-42"
    got = await session_service.get_session(app_name=APP, user_id="u", session_id="order-42\n")
    assert got is not None and got.id == "order-42" and got.state["cart"] == "book"
    await session_service.delete_session(app_name=APP, user_id="u", session_id="order-42\n")
    assert await session_service.get_session(app_name=APP, user_id="u", session_id="order-42") is None


async def test_append_event_bytes(session_service: BaseSessionService) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    content = types.Content(role="user", parts=[types.Part.from_bytes(data=b"img", mime_type="image/png")])
    grounding = types.GroundingMetadata(search_entry_point=types.SearchEntryPoint(sdk_blob=b"blob"))
    await session_service.append_event(session, _event(content=content, grounding_metadata=grounding))
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None and len(got.events) == 1
    assert got.events[0].content == content and got.events[0].grounding_metadata == grounding


async def test_append_event_complete(session_service: BaseSessionService) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    event = Event(
        invocation_id="invocation", author="user",
        content=types.Content(role="user", parts=[types.Part(text="test_text")]),
        turn_complete=True, partial=False,
        actions=EventActions(artifact_delta={"file": 0}, transfer_to_agent="agent", escalate=True),
        long_running_tool_ids={"tool1"}, error_code="error_code", error_message="error_message",
        interrupted=True, grounding_metadata=types.GroundingMetadata(web_search_queries=["q"]),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1, candidates_token_count=1, total_token_count=2),
        citation_metadata=types.CitationMetadata(), custom_metadata={"custom_key": "v"},
        timestamp=1700000000.123,
        input_transcription=types.Transcription(text="in", finished=True),
        output_transcription=types.Transcription(text="out", finished=True),
    )
    await session_service.append_event(session, event)
    assert await session_service.get_session(app_name=APP, user_id="u", session_id=session.id) == session


async def test_append_event_function_call_and_response(session_service: BaseSessionService) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    call = Event(invocation_id="i", author="bot", content=types.Content(role="model", parts=[
        types.Part(function_call=types.FunctionCall(id="c1", name="lookup", args={"q": "x"}))]))
    answer = Event(invocation_id="i", author="bot", content=types.Content(role="user", parts=[
        types.Part(function_response=types.FunctionResponse(id="c1", name="lookup",
                                                            response={"result": [1, 2]}))]))
    for event in (call, answer):
        await session_service.append_event(session, event)
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None and got.events == [call, answer]


async def test_append_event_with_requested_tool_confirmations(
    session_service: BaseSessionService,
) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    confirmation = ToolConfirmation(hint="dynamic hint", confirmed=False,
                                    payload={"collection_name": "photos", "resource_id": "album_1"})
    event = Event(invocation_id="i", author="user",
                  actions=EventActions(requested_tool_confirmations={"tool_call_1": confirmation}))
    await session_service.append_event(session, event)
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None
    assert got.events[0].actions.requested_tool_confirmations["tool_call_1"] == confirmation


async def test_append_event_with_non_serializable_state_delta(
    session_service: BaseSessionService,
) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    await session_service.append_event(session, _event(delta={"callback": lambda: 1, "ok": 2}))
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None and len(got.events) == 1
    assert got.state["ok"] == 2 and isinstance(got.state["callback"], str)


async def test_session_last_update_time_updates_on_event(session_service: BaseSessionService) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    original = session.last_update_time
    await session_service.append_event(session, _event(timestamp=original + 10))
    assert session.last_update_time == pytest.approx(original + 10, abs=1e-6)
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None and got.last_update_time == pytest.approx(original + 10, abs=1e-6)


async def test_append_event_to_deleted_session_raises_session_not_found(
    session_service: BaseSessionService,
) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    await session_service.delete_session(app_name=APP, user_id="u", session_id=session.id)
    with pytest.raises(SessionNotFoundError):
        await session_service.append_event(session, _event())


async def test_append_event_to_stale_session(session_service: BaseSessionService) -> None:
    now = time.time()
    original = await session_service.create_session(app_name=APP, user_id="u")
    await session_service.append_event(original, _event(delta={"sk1": "v1"}, timestamp=now + 1,
                                                        invocation_id="inv1"))
    updated = await session_service.get_session(app_name=APP, user_id="u", session_id=original.id)
    assert updated is not None
    await session_service.append_event(updated, _event(delta={"sk2": "v2"}, timestamp=now + 2,
                                                       invocation_id="inv2"))
    with pytest.raises(StaleSessionError, match="modified in storage"):
        await session_service.append_event(original, _event(delta={"sk3": "v3"}, timestamp=now + 3))
    final = await session_service.get_session(app_name=APP, user_id="u", session_id=original.id)
    assert final is not None and [e.invocation_id for e in final.events] == ["inv1", "inv2"]
    assert "sk3" not in final.state


async def test_append_event_concurrent_stale_sessions_reject_stale_writer(
    session_service: BaseSessionService,
) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    for i in range(4):
        latest = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
        assert latest is not None
        copies = [latest.model_copy(deep=True) for _ in range(2)]
        results = await asyncio.gather(
            *(session_service.append_event(c, _event(delta={f"sk{i}-{n}": n},
                                                     timestamp=latest.last_update_time + 10 + n))
              for n, c in enumerate(copies)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], StaleSessionError)
    final = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert final is not None and len(final.events) == 4


async def test_get_session_with_config(session_service: BaseSessionService) -> None:
    base = int(time.time())
    session = await session_service.create_session(app_name=APP, user_id="u")
    for i in range(1, 6):
        await session_service.append_event(session, Event(author="user", timestamp=base + i))

    async def times(**config: Any) -> list[float]:
        got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id,
                                                config=GetSessionConfig(**config) if config else None)
        assert got is not None
        return [e.timestamp for e in got.events]

    assert len(await times()) == 5
    assert await times(num_recent_events=0) == []
    assert await times(num_recent_events=3) == [base + 3, base + 4, base + 5]
    assert await times(after_timestamp=base + 4) == [base + 4, base + 5]
    assert await times(after_timestamp=base + 50) == []
    assert await times(after_timestamp=base + 4, num_recent_events=3) == [base + 4, base + 5]


async def test_partial_events_are_not_persisted(session_service: BaseSessionService) -> None:
    session = await session_service.create_session(app_name=APP, user_id="u")
    await session_service.append_event(session, Event(author="user", partial=True))
    assert session.events == []
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None and got.events == []


async def test_get_user_state(session_service: BaseSessionService) -> None:
    """ADK's five test_get_user_state_* cases: empty, written by append_event, per user, per
    app, latest write wins."""
    assert await session_service.get_user_state(app_name=APP, user_id="u1") == {}
    session = await session_service.create_session(app_name=APP, user_id="u1")
    await session_service.append_event(session, _event(
        author="system", delta={"user:profile": {"name": "Alice"}, "session_key": 1}))
    await session_service.append_event(session, _event(author="system", delta={"user:counter": 1}))
    await session_service.append_event(session, _event(author="system", delta={"user:counter": 2}))
    assert await session_service.get_user_state(app_name=APP, user_id="u1") == {
        "profile": {"name": "Alice"}, "counter": 2}
    assert await session_service.get_user_state(app_name=APP, user_id="u2") == {}
    assert await session_service.get_user_state(app_name="other_app", user_id="u1") == {}


@pytest.fixture
def local_timezone_with_dst() -> Iterator[None]:
    """Run in US Eastern (a local hour repeats each November) where ``time.tzset`` exists."""
    if not hasattr(time, "tzset"):
        yield
        return
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


async def test_get_session_keeps_exact_epoch_across_a_repeated_local_hour(
    session_service: BaseSessionService, local_timezone_with_dst: None,
) -> None:
    epochs = [1730613600.0, 1730615400.0]  # both in US Eastern's repeated hour of 2024-11-03
    session = await session_service.create_session(app_name=APP, user_id="u")
    for epoch in epochs:
        await session_service.append_event(session, Event(author="user", timestamp=epoch))
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None and [e.timestamp for e in got.events] == epochs


async def test_get_session_keeps_append_order_of_tied_timestamps(
    session_service: BaseSessionService,
) -> None:
    """ADK orders tied timestamps by event id; chatledger keeps the order of the appends
    (the log's). Both are stable; this checks chatledger's."""
    session = await session_service.create_session(app_name=APP, user_id="u")
    for event_id in ("event_z", "event_a", "event_m"):
        await session_service.append_event(session, Event(author="user", id=event_id, timestamp=100.0))
    got = await session_service.get_session(app_name=APP, user_id="u", session_id=session.id)
    assert got is not None and [e.id for e in got.events] == ["event_z", "event_a", "event_m"]
