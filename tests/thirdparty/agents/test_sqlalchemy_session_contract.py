"""The Agents SDK's SQLAlchemySession tests, held against ChatLedgerSession (SQLite, PostgreSQL).

Each test restates, under the same name, a case of the SDK's
tests/extensions/memory/test_sqlalchemy_session.py (openai/openai-agents-python, commit
01e48e6f4de67ce350e07d00157fe3efb655c056, the version to be had; 7f7a44f8 was not) that states
behaviour of the ``Session`` protocol, written for chatledger rather than vendored (see
docs/adapters.md). Left out, each a test of SQLAlchemySession's own machinery with nothing to
say about chatledger: DDL compiled per dialect and MySQL's session-id guards
(test_schema_*, test_mysql_*, test_non_mysql_*, test_constructor_does_not_impose_*), how its
rows store JSON (test_sqlalchemy_session_defaults_to_escaped_non_ascii_storage,
test_sqlalchemy_session_can_store_non_ascii_without_escaping: the round trip is kept below),
its DELETE ... RETURNING and BEGIN IMMEDIATE claims and fake-session rollbacks
(test_sqlite_fallback_*, test_pop_item_supports_unknown_delete_rowcount,
test_pop_item_retries_*, test_mutation_cancellation_waits_for_transaction_exit), corrupt rows
written into its tables (test_*corrupt*: chatledger's log is hash-chained and verified instead),
its table-creation locks, SQLite write-lock waits and engine registry
(test_add_items_waits_for_transient_sqlite_write_lock, test_add_items_cancelled_waiter_*,
test_create_tables_false_*, test_sqlite_configuration_registry_*), its ``engine`` property
(test_engine_property_*), the ORDER BY clauses it compiles (test_get_items_orders_by_id_for_ties),
SessionSettings.resolve alone, with no session in it (test_session_settings_resolve), and
rewriting its ``created_at`` column to force timestamp ties
(test_get_items_same_timestamp_consistent_order and test_pop_item_same_timestamp_returns_latest
are restated on the order of appends, which is what they protect).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import pytest_asyncio
from agents import Agent, RunConfig, Runner, SessionSettings, TResponseInputItem
from agents.testing import ScriptedModel
from chatledger import ChatLedger
from chatledger.adapters.agents import ChatLedgerSession
from chatledger.aio import AsyncChatLedger

from ._shim import get_text_message

# slow: the fast loop has test_session.py (the SDK's session cases) on ChatLedgerSession already.
pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
Make = Callable[..., ChatLedgerSession]


@pytest_asyncio.fixture
async def make(database_url: str) -> AsyncIterator[Make]:
    """``make(session_id, session_settings=...)``: a ChatLedgerSession on this test's store."""
    ledger = AsyncChatLedger(ChatLedger.open(database_url))

    def new(session_id: str, **kw: Any) -> ChatLedgerSession:
        return ChatLedgerSession(session_id, ledger, **kw)

    try:
        yield new
    finally:
        await ledger.aclose()


@pytest.fixture
def agent() -> Agent:
    return Agent(name="test", model=ScriptedModel())


def _message(item_id: str, text: str) -> TResponseInputItem:
    return cast(TResponseInputItem, {
        "id": item_id, "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })


def _reasoning(item_id: str) -> TResponseInputItem:
    return cast(TResponseInputItem, {
        "id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": "..."}],
    })


def _contents(items: list[TResponseInputItem]) -> list[Any]:
    return [cast(dict[str, Any], item).get("content") for item in items]


async def test_sqlalchemy_session_direct_ops(make: Make) -> None:
    session = make("direct_ops_test")
    await session.add_items([{"role": "user", "content": "Hello"},
                             {"role": "assistant", "content": "Hi there!"}])
    assert _contents(await session.get_items()) == ["Hello", "Hi there!"]
    popped = await session.pop_item()
    assert popped is not None and popped.get("content") == "Hi there!"
    assert _contents(await session.get_items()) == ["Hello"]
    await session.clear_session()
    assert await session.get_items() == []


async def test_non_ascii_items_round_trip(make: Make) -> None:
    session = make("non_ascii")
    item: TResponseInputItem = {"role": "user", "content": "café 東京"}
    await session.add_items([item])
    assert await session.get_items() == [item]


async def test_runner_integration(make: Make, agent: Agent) -> None:
    session = make("runner_integration_test")
    model = cast(ScriptedModel, agent.model)
    model.enqueue([get_text_message("San Francisco")])
    first = await Runner.run(agent, "What city is the Golden Gate Bridge in?", session=session)
    assert first.final_output == "San Francisco"
    model.enqueue([get_text_message("California")])
    second = await Runner.run(agent, "What state is it in?", session=session)
    assert second.final_output == "California"
    last_input = model.calls[-1].input
    assert len(last_input) > 1
    assert any("Golden Gate Bridge" in str(item.get("content", "")) for item in last_input)


async def test_session_isolation(make: Make, agent: Agent) -> None:
    one, two = make("session_1"), make("session_2")
    model = cast(ScriptedModel, agent.model)
    model.enqueue([get_text_message("I like cats.")])
    await Runner.run(agent, "I like cats.", session=one)
    model.enqueue([get_text_message("I like dogs.")])
    await Runner.run(agent, "I like dogs.", session=two)
    assert "dogs" not in str(await one.get_items()) and "cats" not in str(await two.get_items())


async def test_session_ids_are_case_sensitive(make: Make) -> None:
    upper, lower = make("Foo"), make("foo")
    await upper.add_items([{"role": "user", "content": "upper"}])
    await lower.add_items([{"role": "user", "content": "lower"}])
    assert await upper.get_items() == [{"role": "user", "content": "upper"}]
    assert await lower.get_items() == [{"role": "user", "content": "lower"}]


async def test_session_ids_keep_trailing_spaces_on_sqlite(make: Make) -> None:
    """(On PostgreSQL too: a visitor id keeps its spaces.)"""
    bare, padded = make("tenant"), make("tenant ")
    await bare.add_items([{"role": "user", "content": "bare"}])
    await padded.add_items([{"role": "user", "content": "padded"}])
    assert await bare.get_items() == [{"role": "user", "content": "bare"}]
    assert await padded.get_items() == [{"role": "user", "content": "padded"}]


async def test_get_items_with_limit(make: Make) -> None:
    session = make("limit_test")
    await session.add_items([{"role": r, "content": str(i)}
                             for i, r in enumerate(["user", "assistant"] * 2, start=1)])
    assert _contents(await session.get_items(limit=2)) == ["3", "4"]
    assert len(await session.get_items()) == 4
    assert len(await session.get_items(limit=10)) == 4


async def test_pop_from_empty_session(make: Make) -> None:
    assert await make("empty_session").pop_item() is None


async def test_concurrent_pop_item_returns_each_row_once(make: Make) -> None:
    writer, other = make("concurrent_pop"), make("concurrent_pop")
    await writer.add_items([{"role": "user", "content": "first"},
                            {"role": "assistant", "content": "second"}])
    popped = await asyncio.wait_for(asyncio.gather(writer.pop_item(), other.pop_item()), timeout=60)
    assert {cast(dict[str, Any], p)["content"] for p in popped if p is not None} == {"first", "second"}


async def test_get_items_limit_returns_fewer_when_history_exhausted(make: Make) -> None:
    session = make("limit_exhausted")
    await session.add_items([{"role": "user", "content": "only valid"}])
    assert _contents(await session.get_items(limit=5)) == ["only valid"]


async def test_add_empty_items_list(make: Make) -> None:
    session = make("add_empty_test")
    await session.add_items([])
    assert await session.get_items() == []


async def test_add_items_concurrent_first_access_with_create_tables(make: Make) -> None:
    session = make("concurrent_first_access")
    submitted = [f"msg-{i}" for i in range(25)]
    results = await asyncio.gather(
        *(session.add_items([{"role": "user", "content": c}]) for c in submitted),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sorted(_contents(await session.get_items())) == sorted(submitted)


async def test_add_items_concurrent_first_write_after_tables_exist(make: Make) -> None:
    await make("concurrent_first_write").get_items()  # the store exists and has been read
    session = make("concurrent_first_write")  # a second handle on the same session id
    submitted = [f"msg-{i}" for i in range(25)]
    results = await asyncio.gather(
        *(session.add_items([{"role": "user", "content": c}]) for c in submitted),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sorted(_contents(await session.get_items())) == sorted(submitted)


async def test_add_items_concurrent_first_access_across_from_url_sessions(
    database_url: str,
) -> None:
    """Two sessions, each on a ledger of its own over the same store, written at once."""
    ledgers = [AsyncChatLedger(ChatLedger.open(database_url)) for _ in range(2)]
    try:
        a, b = (ChatLedgerSession(sid, led) for sid, led in zip(("from_url_a", "from_url_b"), ledgers))
        results = await asyncio.gather(a.add_items([{"role": "user", "content": "one"}]),
                                       b.add_items([{"role": "user", "content": "two"}]),
                                       return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert _contents(await a.get_items()) == ["one"]
        assert _contents(await b.get_items()) == ["two"]
    finally:
        for ledger in ledgers:
            await ledger.aclose()


async def test_add_items_concurrent_first_access_across_from_url_sessions_cross_loop(
    database_url: str,
) -> None:
    """Two threads, each with its own event loop, ledger and session, write at once."""
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def worker(session_id: str, content: str) -> None:
        async def run() -> list[Any]:
            ledger = AsyncChatLedger(ChatLedger.open(database_url))
            try:
                session = ChatLedgerSession(session_id, ledger)
                barrier.wait()
                await asyncio.wait_for(session.add_items([{"role": "user", "content": content}]), 60)
                return _contents(await session.get_items())
            finally:
                await ledger.aclose()

        try:
            outcome[session_id] = asyncio.run(run())
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            outcome[session_id] = type(exc).__name__

    threads = [threading.Thread(target=worker, args=a)
               for a in (("cross_loop_a", "one"), ("cross_loop_b", "two"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert outcome == {"cross_loop_a": ["one"], "cross_loop_b": ["two"]}


async def test_add_items_concurrent_first_access_across_sessions_with_shared_engine(
    make: Make,
) -> None:
    a, b = make("shared_engine_a"), make("shared_engine_b")
    results = await asyncio.gather(a.add_items([{"role": "user", "content": "one"}]),
                                   b.add_items([{"role": "user", "content": "two"}]),
                                   return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert _contents(await a.get_items()) == ["one"] and _contents(await b.get_items()) == ["two"]


async def test_add_items_concurrent_first_access_with_shared_session_cross_loop(make: Make) -> None:
    session = make("shared_session_cross_loop")
    await session.get_items()  # the session's home loop is this one
    barrier = threading.Barrier(2)
    results: list[tuple[str, str]] = []

    def worker(content: str) -> None:
        async def run() -> None:
            barrier.wait()
            await asyncio.wait_for(session.add_items([{"role": "user", "content": content}]), 60)

        try:
            asyncio.run(run())
            results.append((content, "ok"))
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            results.append((content, type(exc).__name__))

    threads = [threading.Thread(target=worker, args=(c,)) for c in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert sorted(results) == [("one", "ok"), ("two", "ok")]
    assert sorted(_contents(await session.get_items())) == ["one", "two"]


async def test_get_items_same_timestamp_consistent_order(make: Make) -> None:
    session = make("same_timestamp_test")
    await session.add_items([_message("older_same_ts", "old")])
    await session.add_items([_reasoning("rs_same_ts"), _message("msg_same_ts", "...")])
    ids = [cast(dict[str, Any], i)["id"] for i in await session.get_items()]
    assert ids == ["older_same_ts", "rs_same_ts", "msg_same_ts"]
    ids = [cast(dict[str, Any], i)["id"] for i in await session.get_items(limit=2)]
    assert ids == ["rs_same_ts", "msg_same_ts"]


async def test_pop_item_same_timestamp_returns_latest(make: Make) -> None:
    session = make("same_timestamp_pop_test")
    await session.add_items([_reasoning("rs_pop_same_ts"), _message("msg_pop_same_ts", "...")])
    popped = await session.pop_item()
    assert popped is not None and cast(dict[str, Any], popped)["id"] == "msg_pop_same_ts"
    assert [cast(dict[str, Any], i)["id"] for i in await session.get_items()] == ["rs_pop_same_ts"]


async def test_session_settings_default(make: Make) -> None:
    session = make("default_settings_test")
    assert isinstance(session.session_settings, SessionSettings)
    assert session.session_settings.limit is None


@pytest.mark.parametrize("use_dictionary", [False, True], ids=["class", "dictionary"])
async def test_session_settings_from_url(make: Make, use_dictionary: bool) -> None:
    settings: Any = {"limit": 5} if use_dictionary else SessionSettings(limit=5)
    session = make("from_url_settings_test", session_settings=settings)
    assert isinstance(session.session_settings, SessionSettings)
    assert session.session_settings.limit == 5


async def test_get_items_uses_session_settings_limit(make: Make) -> None:
    session = make("uses_settings_limit_test", session_settings=SessionSettings(limit=3))
    await session.add_items([{"role": "user", "content": f"Message {i}"} for i in range(5)])
    assert _contents(await session.get_items()) == ["Message 2", "Message 3", "Message 4"]


async def test_get_items_explicit_limit_overrides_session_settings(make: Make) -> None:
    session = make("explicit_override_test", session_settings=SessionSettings(limit=5))
    await session.add_items([{"role": "user", "content": f"Message {i}"} for i in range(10)])
    assert _contents(await session.get_items(limit=2)) == ["Message 8", "Message 9"]


async def test_runner_with_session_settings_override(make: Make, agent: Agent) -> None:
    session = make("runner_override_test", session_settings=SessionSettings(limit=100))
    await session.add_items([{"role": "user", "content": f"Turn {i}"} for i in range(10)])
    model = cast(ScriptedModel, agent.model)
    model.enqueue([get_text_message("Got it")])
    await Runner.run(agent, "New question", session=session,
                     run_config=RunConfig(session_settings=SessionSettings(limit=2)))
    history = [i for i in model.calls[-1].input if i.get("content") != "New question"]
    assert len(history) == 2
