"""The Agents SDK's Session-memory cases, held against ChatLedgerSession on SQLite.

Each test restates, under the same name and checking the same behaviour, a case of the SDK's
tests/memory/test_session.py (openai/openai-agents-python, commit
7f7a44f8dc0650296bd5ab6c745c9bcbaa6ac3b7). The code here is chatledger's own, written anew,
not a copy: ``SQLiteSession`` from _shim.py builds a ChatLedgerSession on a ledger opened on the
given SQLite file. Cases that test SQLiteSession's own machinery (its connections, file locks,
private helpers, corrupt rows in its tables) are left out; each is named where it would stand,
with a "[chatledger]" note saying why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, SessionSettings, TResponseInputItem
from agents.testing import ScriptedModel

from ._shim import SQLiteSession, get_text_message

RUNNERS = pytest.mark.parametrize("runner_method", ["run", "run_sync", "run_streamed"])


def msg(role: str, content: str) -> TResponseInputItem:
    return {"role": role, "content": content}  # type: ignore[return-value]


def contents(items: list[TResponseInputItem]) -> list[Any]:
    return [item.get("content") for item in items]  # type: ignore[union-attr]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def scripted() -> tuple[ScriptedModel, Agent[Any]]:
    model = ScriptedModel()
    return model, Agent(name="test", model=model)


def _sync_in_own_loop(agent: Agent[Any], data: Any, kw: dict[str, Any]) -> Any:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return Runner.run_sync(agent, data, **kw)
    finally:
        loop.close()


async def drive(how: str, agent: Agent[Any], data: Any, **kw: Any) -> Any:
    """One turn through Runner.run, Runner.run_sync (in a worker thread) or Runner.run_streamed."""
    if how == "run":
        return await Runner.run(agent, data, **kw)
    if how == "run_sync":
        return await asyncio.to_thread(_sync_in_own_loop, agent, data, kw)
    if how == "run_streamed":
        streamed = Runner.run_streamed(agent, data, **kw)
        async for _ in streamed.stream_events():
            pass
        return streamed
    raise AssertionError(how)


# [chatledger] test_await_mutation_cancellation_hides_later_failure_without_loop_error left out: tests SQLiteSession's private mutation helper.


@RUNNERS
@pytest.mark.asyncio
async def test_session_memory_basic_functionality_parametrized(
    runner_method: str, db: Path, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    session = SQLiteSession("test_session_123", db)
    model.enqueue([get_text_message("San Francisco")])
    first = await drive(runner_method, agent, "Golden Gate Bridge: which city?", session=session)
    model.enqueue([get_text_message("California")])
    second = await drive(runner_method, agent, "And which state?", session=session)
    assert (first.final_output, second.final_output) == ("San Francisco", "California")
    assert len(model.calls[-1].input) > 1  # the earlier turn came back from the session


@RUNNERS
@pytest.mark.asyncio
async def test_session_memory_with_explicit_instance_parametrized(
    runner_method: str, db: Path, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    session = SQLiteSession("test_session_456", db)
    for reply, prompt in [("Hello", "Hi there"), ("You said hi", "What did I say?")]:
        model.enqueue([get_text_message(reply)])
        outcome = await drive(runner_method, agent, prompt, session=session)
        assert outcome.final_output == reply


@RUNNERS
@pytest.mark.asyncio
async def test_session_memory_disabled_parametrized(
    runner_method: str, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    for reply, prompt in [("Hello", "Hi there"), ("No memory", "What did I say?")]:
        model.enqueue([get_text_message(reply)])
        assert (await drive(runner_method, agent, prompt)).final_output == reply
    assert len(model.calls[-1].input) == 1  # no session: only this turn's message


@RUNNERS
@pytest.mark.asyncio
async def test_session_memory_different_sessions_parametrized(
    runner_method: str, db: Path, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    cats, dogs = SQLiteSession("session_1", db), SQLiteSession("session_2", db)
    for session, reply in [(cats, "I like cats"), (dogs, "I like dogs")]:
        model.enqueue([get_text_message(reply)])
        assert (await drive(runner_method, agent, reply, session=session)).final_output == reply
    model.enqueue([get_text_message("cats, you said")])
    back = await drive(runner_method, agent, "What do I like?", session=cats)
    assert back.final_output == "cats, you said"
    assert "I like dogs" not in str(model.calls[-1].input)
    assert "I like cats" in str(model.calls[-1].input)


@pytest.mark.asyncio
async def test_sqlite_session_memory_direct(db: Path) -> None:
    session = SQLiteSession("direct_test", db)
    await session.add_items([msg("user", "Hello"), msg("assistant", "Hi there!")])
    got = await session.get_items()
    assert [(i.get("role"), i.get("content")) for i in got] == [  # type: ignore[union-attr]
        ("user", "Hello"),
        ("assistant", "Hi there!"),
    ]
    await session.clear_session()
    assert await session.get_items() == []


# [chatledger] test_sqlite_session_close_closes_worker_thread_connections left out: SQLiteSession's own connections (ChatLedgerSession owns none: the ledger is the caller's).


# [chatledger] test_sqlite_session_closed_rejects_empty_add_items left out: SQLiteSession's connection lifecycle (close() releases nothing here).


@pytest.mark.asyncio
async def test_sqlite_session_memory_pop_item(db: Path) -> None:
    session = SQLiteSession("pop_test", db)
    assert await session.pop_item() is None
    conversation = [msg("user", "Hello"), msg("assistant", "Hi there!"), msg("user", "How are you?")]
    await session.add_items(conversation)
    assert len(await session.get_items()) == 3
    for remaining, expected in zip((2, 1, 0), reversed(conversation), strict=True):
        popped = await session.pop_item()
        assert popped is not None
        assert (popped.get("role"), popped.get("content")) == (  # type: ignore[union-attr]
            expected["role"],  # type: ignore[typeddict-item]
            expected["content"],  # type: ignore[typeddict-item]
        )
        left = await session.get_items()
        assert contents(left) == contents(conversation[:remaining])
    assert await session.pop_item() is None
    assert await session.get_items() == []


@pytest.mark.asyncio
async def test_session_memory_pop_different_sessions(db: Path) -> None:
    one, two = SQLiteSession("session_1", db), SQLiteSession("session_2", db)
    await one.add_items([msg("user", "one: only")])
    await two.add_items([msg("user", "two: first"), msg("user", "two: second")])
    popped = await two.pop_item()
    assert popped is not None and popped.get("content") == "two: second"  # type: ignore[union-attr]
    assert contents(await one.get_items()) == ["one: only"]
    assert contents(await two.get_items()) == ["two: first"]


# [chatledger] test_sqlite_session_pop_item_skips_corrupt_most_recent left out: writes corrupt JSON into SQLiteSession's table; chatledger's log is hash-chained and verified instead.


# [chatledger] test_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows left out: same: corrupt rows in SQLiteSession's table.


@pytest.mark.asyncio
async def test_sqlite_session_get_items_with_limit(db: Path) -> None:
    session = SQLiteSession("count_test", db)
    texts = [f"{kind} {n}" for n in (1, 2, 3) for kind in ("Message", "Response")]
    await session.add_items(
        [msg("user" if t.startswith("Message") else "assistant", t) for t in texts]
    )
    assert contents(await session.get_items()) == texts
    for limit in (2, 4, 10):
        assert contents(await session.get_items(limit=limit)) == texts[-limit:]
    assert await session.get_items(limit=0) == []


# [chatledger] test_sqlite_session_get_items_limit_skips_corrupt_newest_rows left out: same: corrupt rows in SQLiteSession's table.


# [chatledger] test_sqlite_session_get_items_session_settings_limit_skips_corrupt_rows left out: same: corrupt rows in SQLiteSession's table.


@RUNNERS
@pytest.mark.asyncio
async def test_session_memory_appends_list_input_by_default(
    runner_method: str, db: Path, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    session = SQLiteSession("test_validation_parametrized", db)
    history = [msg("user", "Earlier message"), msg("assistant", "Saved reply")]
    await session.add_items(history)
    turn = [msg("user", "Test message")]
    model.enqueue([get_text_message("ok")])
    await drive(runner_method, agent, turn, session=session)
    assert model.calls[-1].input == history + turn


@RUNNERS
@pytest.mark.asyncio
async def test_session_callback_prepared_input(
    runner_method: str, db: Path, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    session = SQLiteSession("session_1", db)
    history = [msg("user", "Hello there."), msg("assistant", "Hi, how can I help?")]
    await session.add_items(history)

    def users_only(past: list[Any], new: list[Any]) -> list[Any]:
        return [item for item in past if item["role"] == "user"] + new

    turn = [msg("user", "What is your name?")]
    model.enqueue([get_text_message("A model")])
    await drive(
        runner_method,
        agent,
        turn,
        session=session,
        run_config=RunConfig(session_input_callback=users_only),
    )
    assert model.calls[-1].input == [history[0], turn[0]]


@RUNNERS
@pytest.mark.asyncio
async def test_session_callback_repeating_history_does_not_grow_session(
    runner_method: str, db: Path, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    session = SQLiteSession("session_repeat", db)

    def echo_oldest(past: list[Any], new: list[Any]) -> list[Any]:
        return [*past, past[0], *new] if past else new

    for n in range(3):
        model.enqueue([get_text_message(f"assistant {n}")])
        await drive(
            runner_method,
            agent,
            f"user {n}",
            session=session,
            run_config=RunConfig(session_input_callback=echo_oldest),
        )
    stored = await session.get_items()
    said = [i.get("content") for i in stored if i.get("role") == "user"]  # type: ignore[union-attr]
    assert said == ["user 0", "user 1", "user 2"]
    assert len(stored) == 6


@pytest.mark.asyncio
async def test_sqlite_session_unicode_content(db: Path) -> None:
    session = SQLiteSession("unicode_test", db)
    texts = ["こんにちは", "😊👍", "Привет"]
    await session.add_items([msg(r, t) for r, t in zip(("user", "assistant", "user"), texts)])
    assert contents(await session.get_items()) == texts


@pytest.mark.asyncio
async def test_sqlite_session_special_characters_and_sql_injection(db: Path) -> None:
    session = SQLiteSession("special_chars_test", db)
    texts = [
        "O'Reilly",
        "DROP TABLE sessions;",
        '"SELECT * FROM users WHERE name = "admin";"',
        "Robert'); DROP TABLE students;--",
        "Normal message",
    ]
    await session.add_items([msg("user" if n % 2 == 0 else "assistant", t) for n, t in enumerate(texts)])
    assert contents(await session.get_items()) == texts


@pytest.mark.asyncio
async def test_sqlite_session_concurrent_access(db: Path) -> None:
    session = SQLiteSession("concurrent_test", db)
    texts = {f"Message {n}" for n in range(10)}

    def append_from_thread(text: str) -> None:
        asyncio.run(session.add_items([msg("user", text)]))

    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(append_from_thread, sorted(texts)))
    assert {c for c in contents(await session.get_items()) if isinstance(c, str)} == texts


# [chatledger] test_sqlite_session_file_lock_is_shared_across_instances left out: SQLiteSession's private file-lock registry.


# [chatledger] test_sqlite_session_failed_add_items_releases_write_lock left out: drops SQLiteSession's tables and probes its SQLite write lock.


@pytest.mark.asyncio
async def test_session_add_items_exception_propagates_in_streamed(
    scripted: tuple[ScriptedModel, Agent[Any]],
) -> None:
    # upstream issue 2130: a failing add_items must surface from the stream, not hang it
    model, agent = scripted
    session = SQLiteSession("test_exception_session")

    async def broken(_items: list[TResponseInputItem]) -> None:
        raise RuntimeError("add_items broke on purpose")

    session.add_items = broken  # type: ignore[method-assign]
    model.enqueue([get_text_message("never reached")])
    streamed = Runner.run_streamed(agent, "Hello", session=session)

    async def exhaust() -> None:
        async for _ in streamed.stream_events():
            pass

    with pytest.raises(RuntimeError, match="add_items broke on purpose"):
        await asyncio.wait_for(exhaust(), timeout=5.0)


@pytest.mark.asyncio
async def test_session_settings_default() -> None:
    settings = SQLiteSession("default_settings_test").session_settings
    assert isinstance(settings, SessionSettings)
    assert settings.limit is None


@pytest.mark.asyncio
async def test_session_settings_constructor() -> None:
    session = SQLiteSession("constructor_settings_test", session_settings=SessionSettings(limit=5))
    assert session.session_settings is not None
    assert session.session_settings.limit == 5


@pytest.mark.asyncio
async def test_session_settings_constructor_normalizes_dictionary() -> None:
    settings = SQLiteSession("dictionary_settings_test", session_settings={"limit": 0}).session_settings
    assert isinstance(settings, SessionSettings)
    assert settings.limit == 0
    assert settings.resolve({"limit": 4}).limit == 4  # type: ignore[arg-type]


def test_session_settings_rejects_unknown_dictionary_fields() -> None:
    with pytest.raises(TypeError, match="Unknown session settings: limitt"):
        SQLiteSession("invalid_settings_test", session_settings={"limitt": 1})


@pytest.mark.asyncio
async def test_get_items_uses_session_settings_limit(db: Path) -> None:
    session = SQLiteSession("uses_settings_limit_test", db, session_settings=SessionSettings(limit=3))
    await session.add_items([msg("user", f"Message {n}") for n in range(5)])
    assert contents(await session.get_items()) == ["Message 2", "Message 3", "Message 4"]


@pytest.mark.asyncio
async def test_get_items_explicit_limit_overrides_session_settings(db: Path) -> None:
    session = SQLiteSession("explicit_override_test", db, session_settings=SessionSettings(limit=5))
    await session.add_items([msg("user", f"Message {n}") for n in range(10)])
    assert contents(await session.get_items(limit=2)) == ["Message 8", "Message 9"]


@pytest.mark.asyncio
async def test_session_settings_resolve() -> None:
    base = SessionSettings(limit=100)
    assert base.resolve(SessionSettings(limit=50)).limit == 50
    assert base.limit == 100
    assert base.resolve(None).limit == 100


@pytest.mark.asyncio
async def test_runner_with_session_settings_override(
    db: Path, scripted: tuple[ScriptedModel, Agent[Any]]
) -> None:
    model, agent = scripted
    session = SQLiteSession("runner_override_test", db, session_settings=SessionSettings(limit=100))
    await session.add_items([msg("user", f"Turn {n}") for n in range(10)])
    model.enqueue([get_text_message("Got it")])
    await Runner.run(
        agent,
        "New question",
        session=session,
        run_config=RunConfig(session_settings=SessionSettings(limit=2)),
    )
    past = [i for i in model.calls[-1].input if i.get("content") != "New question"]  # type: ignore[union-attr]
    assert len(past) == 2


# [chatledger] _drop_sqlite_table and _sqlite_write_lock_is_free left out: helpers of the SQLite-internal tests.


# [chatledger] test_sqlite_session_failed_clear_session_rolls_back left out: drops SQLiteSession's tables.


# [chatledger] test_sqlite_session_failed_pop_item_releases_write_lock left out: drops SQLiteSession's tables.


# [chatledger] test_sqlite_session_rollback_failure_evicts_connection left out: injects a failing sqlite3.Connection into SQLiteSession.


# [chatledger] test_sqlite_session_close_retries_quarantined_connection left out: injects a failing sqlite3.Connection into SQLiteSession.


# [chatledger] test_sqlite_session_post_commit_cancellation_propagates_after_known_outcome left out: SQLiteSession's private commit path.
