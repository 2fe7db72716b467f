"""chatledger.aio: the ledger as awaitables, on real stores (SQLite files and PostgreSQL).

No database call on the event loop's thread; a cancelled await leaves all of its command's
events or none; the seed's story through the async API; the same commands and queries as
ChatLedger, with their signatures.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest
from chatledger import ChatLedger, ManualClock, SessionPolicy
from chatledger.aio import AsyncChatLedger, LedgerClosedError
from chatledger.application.unit_of_work import UnitOfWork

from .aio_helpers import database_threads
from .conftest import POSTGRES_CONNINFO


class SignallingClock:
    """The ledger's clock, which also tells when a command (in its worker) first asks the time."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.asked = threading.Event()

    def __call__(self) -> datetime:
        self.asked.set()
        return self.clock()


@contextmanager
def write_lock_held(url: str) -> Iterator[Callable[[], None]]:
    """Another connection holds the store's write lock until the yielded ``release()``."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(urlparse(url).path[1:], isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        release = lambda: conn.execute("COMMIT") and None  # noqa: E731
        try:
            yield release
        finally:
            conn.close()
        return
    schema = parse_qs(urlparse(url).query)["schema"][0]
    with psycopg.connect(POSTGRES_CONNINFO) as pg:
        pg.execute(f'LOCK TABLE "{schema}".chatledger_events IN EXCLUSIVE MODE')
        yield pg.commit


def events_since(ledger: AsyncChatLedger, position: int) -> list[Any]:
    return ledger.sync.events_after(position, limit=10_000)


def head(ledger: AsyncChatLedger) -> int:
    events = ledger.sync.events_after(0, limit=10_000)
    return events[-1].position if events else 0


# ---------------------------------------------------------------- the loop's thread


def test_no_database_call_runs_on_the_event_loops_thread(database_url: str) -> None:
    async def main(seen: Any) -> tuple[int, int]:
        loop_thread = threading.get_ident()
        async with AsyncChatLedger.open(database_url, clock=ManualClock()) as ledger:
            # 100 concurrent receives: 25 visitors, 4 messages each at once (lost races re-run
            # in the workers), then every kind of query.
            turns = await asyncio.gather(*(
                ledger.receive(f"v-{i % 25}", f"message {i}", client_message_id=f"m-{i}")
                for i in range(100)
            ))
            assert len({t.session_id for t in turns}) == 25
            await ledger.reply(turns[0].session_id, "hello")
            await ledger.session(turns[0].session_id)
            await ledger.catch_up()
            assert (await ledger.transcript(turns[0].session_id)).messages
            stored = [e for e in await ledger.events_after(0, limit=10_000)
                      if e.type == "Session.MessageReceived"]
            assert len(stored) == 100  # every message, once
            on_loop = seen[loop_thread]
            # The probe sees a call made on the loop's thread (so the count above could fail):
            ledger.sync.visitor("v-0")
            assert seen[loop_thread] > on_loop
        return loop_thread, on_loop

    with database_threads() as seen:
        loop_thread, on_loop = asyncio.run(main(seen))
    assert on_loop == 0, f"{on_loop} database calls ran on the event loop's thread"
    workers = {t: n for t, n in seen.items() if t != loop_thread}
    assert sum(workers.values()) > 100 and len(workers) > 1


# ---------------------------------------------------------------- cancellation


def test_a_command_cancelled_while_it_runs_commits_whole_and_the_await_waits_for_it(
    database_url: str,
) -> None:
    async def main() -> None:
        clock = SignallingClock()
        async with AsyncChatLedger.open(database_url, clock=clock) as ledger:
            before = head(ledger)
            with write_lock_held(database_url) as release:
                clock.asked.clear()
                task = asyncio.create_task(ledger.receive("v-cancel", "hi", client_message_id="c-1"))
                await asyncio.to_thread(clock.asked.wait, 10)  # it runs in its worker now
                await asyncio.sleep(0.2)  # ... and waits for the write lock
                task.cancel()
                await asyncio.sleep(0.3)
                assert not task.done(), "the await gave up on a command still running"
                assert head(ledger) == before
                release()
                with pytest.raises(asyncio.CancelledError):
                    await task
            stored = events_since(ledger, before)  # the await ended after the command did
            assert {e.type for e in stored} >= {"Session.Started", "Session.MessageReceived"}
            current = await ledger.current_session("v-cancel")
            assert current is not None and [m.text for m in current.messages] == ["hi"]
            # What the caller does to learn the outcome: the same command again, idempotent.
            retry = await ledger.receive("v-cancel", "hi", client_message_id="c-1")
            assert retry.duplicate and head(ledger) == stored[-1].position
            # A reference: the same first message of another visitor appends as many events.
            mark = head(ledger)
            await ledger.receive("v-reference", "hi", client_message_id="c-1")
            assert len(events_since(ledger, mark)) == len(stored)

    asyncio.run(main())


def test_a_command_cancelled_before_a_worker_took_it_never_runs(database_url: str) -> None:
    async def main() -> None:
        clock = SignallingClock()
        async with AsyncChatLedger.open(database_url, clock=clock, workers=1) as ledger:
            before = head(ledger)
            with write_lock_held(database_url) as release:
                clock.asked.clear()
                first = asyncio.create_task(ledger.receive("v-first", "one"))
                await asyncio.to_thread(clock.asked.wait, 10)  # the one worker is taken
                queued = asyncio.create_task(ledger.receive("v-queued", "two"))
                await asyncio.sleep(0.2)
                queued.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(queued, 2)  # at once: it had not started
                release()
                await first
            await asyncio.sleep(0.2)  # the worker is free: a forgotten call would run now
            assert await ledger.visitor("v-queued") is None
            assert await ledger.current_session("v-queued") is None
            assert (await ledger.current_session("v-first")) is not None
            stored = len(events_since(ledger, before))
            mark = head(ledger)
            await ledger.receive("v-reference", "one")
            assert len(events_since(ledger, mark)) == stored  # v-first's events only

    asyncio.run(main())


def test_a_cancelled_command_that_fails_appends_nothing(sqlite_url: str) -> None:
    async def main() -> None:
        clock = SignallingClock()
        async with AsyncChatLedger.open(sqlite_url, clock=clock, sqlite_lock_timeout_s=1) as ledger:
            before = head(ledger)
            with write_lock_held(sqlite_url):  # held past the command's lock timeout
                clock.asked.clear()
                task = asyncio.create_task(ledger.receive("v-fails", "hi"))
                await asyncio.to_thread(clock.asked.wait, 10)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert head(ledger) == before and await ledger.visitor("v-fails") is None

    asyncio.run(main())


def test_an_anyio_cancel_scope_gets_the_result_of_a_command_that_committed(sqlite_url: str) -> None:
    import anyio

    async def main() -> None:
        clock = SignallingClock()
        async with AsyncChatLedger.open(sqlite_url, clock=clock) as ledger:
            with write_lock_held(sqlite_url) as release:
                results: list[Any] = []
                clock.asked.clear()
                with anyio.CancelScope() as scope:

                    async def cancel_once_running() -> None:
                        await anyio.to_thread.run_sync(clock.asked.wait, 10)
                        scope.cancel()  # the command runs in its worker and waits for the lock
                        threading.Timer(0.3, release).start()

                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(cancel_once_running)
                        results.append(await ledger.receive("v-scope", "hi"))
                        await anyio.sleep(5)  # the scope's cancellation lands here
            assert scope.cancelled_caught and results and results[0].is_new_session
            assert await ledger.current_session("v-scope") is not None

    anyio.run(main)


# ---------------------------------------------------------------- the seed's story


def test_the_seeds_story_through_the_async_api(database_url: str) -> None:
    async def main() -> None:
        clock = ManualClock()
        policy = SessionPolicy(idle_timeout=timedelta(minutes=30), carry_over_slots=frozenset({"language"}))
        async with AsyncChatLedger.open(database_url, clock=clock, policy=policy) as ledger:
            first = await ledger.receive("v-ana", "What are your opening hours?")
            await ledger.set_slot(first.session_id, "language", "en")
            await ledger.reply(first.session_id, "9:00-18:00.")
            clock.advance(minutes=2)
            again = await ledger.receive("v-ana", "Do you ship to Portugal?")
            assert again.session_id == first.session_id and not again.is_new_session
            await ledger.reply(first.session_id, "Yes.")
            clock.advance(hours=1)
            back = await ledger.receive("v-ana", "I'm back")
            assert back.is_returning and back.previous_session_id == first.session_id
            assert back.away_for == timedelta(hours=1)  # since the last reply
            assert back.carried_slots == {"language": "en"}
            await ledger.reply(back.session_id, "Welcome back! How can I help you today?")
            await ledger.link_identity("v-ana", "u-ana")
            await ledger.set_slot(back.session_id, "name", "Ana", scope="user")
            assert (await ledger.session(first.session_id)).status == "timed_out"
            assert (await ledger.session(back.session_id)).user_id == "u-ana"
            steps = await ledger.history(first.session_id)
            assert steps and steps[-1].state.status == "timed_out"
            await ledger.catch_up()
            memory = await ledger.memory(user_id="u-ana")
            assert memory.known and memory.display_name == "Ana" and memory.session_count == 2
            transcript = await ledger.transcript(user_id="u-ana")
            assert [m.text for m in transcript.messages][-1] == "Welcome back! How can I help you today?"
            assert (await ledger.verify()).ok

    asyncio.run(main())


# ---------------------------------------------------------------- the facade itself

NOT_OFFLOADED = {"open", "close", "webhook"}  # open(): _Opening; close(): aclose(); webhook: .sync
READ_WHOLE = {"history", "messages"}  # iterators in the facade: read whole in the worker


def test_every_command_and_query_of_chatledger_is_awaitable_with_its_signature() -> None:
    public = {
        name for cls in ChatLedger.__mro__[:ChatLedger.__mro__.index(UnitOfWork)]  # the facade
        for name, value in vars(cls).items() if not name.startswith("_") and callable(value)
    } - NOT_OFFLOADED - {"name"}
    assert public >= {"receive", "reply", "sweep", "memory", "erase", "history", "catch_up"}
    ledger = AsyncChatLedger.__new__(AsyncChatLedger)
    for name in sorted(public - {"background_jobs"}):
        method = getattr(ledger, name)
        assert inspect.iscoroutinefunction(method), name
        want = list(inspect.signature(getattr(ChatLedger, name)).parameters)[1:]
        assert list(inspect.signature(method).parameters) == want, name
        assert method.__doc__ == getattr(ChatLedger, name).__doc__ or name in READ_WHOLE, name


def test_a_closed_ledger_refuses_calls_and_close_waits_for_calls_in_flight(sqlite_url: str) -> None:
    async def main() -> None:
        clock = SignallingClock()
        ledger = await AsyncChatLedger.open(sqlite_url, clock=clock)
        with write_lock_held(sqlite_url) as release:
            clock.asked.clear()
            task = asyncio.create_task(ledger.receive("v-late", "hi"))
            await asyncio.to_thread(clock.asked.wait, 10)
            closing = asyncio.create_task(ledger.aclose())
            await asyncio.sleep(0.2)
            assert not closing.done()
            release()
            assert (await task).is_new_session
            await closing
        with pytest.raises(LedgerClosedError):
            await ledger.receive("v-late", "again")
        await ledger.aclose()  # idempotent
        with ChatLedger.open(sqlite_url) as reopened:
            assert reopened.visitor("v-late") is not None

    asyncio.run(main())


def test_bad_worker_counts_are_refused(sqlite_url: str) -> None:
    from chatledger import ConfigurationError

    with ChatLedger.open(sqlite_url) as sync:
        for workers in (0, -1, True, 2.5):
            with pytest.raises(ConfigurationError, match="workers"):
                AsyncChatLedger(sync, workers=workers)  # type: ignore[arg-type]
        assert AsyncChatLedger(sync).workers == 4


TYPING_PROBE = '''
from chatledger.aio import AsyncChatLedger

async def use(ledger: AsyncChatLedger) -> None:
    turn = await ledger.receive("v", "hi", client_message_id="m-1")
    reveal_type(turn)
    reveal_type(ledger.sweep)
    await ledger.receive(1, "hi")
    await ledger.reply(turn.session_id, "x", role="bat")
    await ledger.receive("v", "hi", nope=1)
'''


@pytest.mark.slow
def test_mypy_sees_the_real_signatures(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "probe.py").write_text(TYPING_PROBE)
    mypy = Path(sys.executable).parent / "mypy"
    done = subprocess.run(
        [str(mypy), "--strict", "--config-file", "/dev/null", "--cache-dir", str(tmp_path / "cache"), "probe.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    out = done.stdout
    assert re.search(r'Revealed type is "chatledger\.[\w.]+\.Turn"', out), out
    assert "def (now: datetime.datetime | None =, *, limit: int | None =, batch_size: int =, all_tenants: bool =)" in out, out
    assert 'Argument 1 has incompatible type "int"; expected "str"' in out, out
    assert "expected \"Literal['bot', 'system']\"" in out, out
    assert 'Unexpected keyword argument "nope"' in out, out
    assert "Found 3 errors" in out, out
