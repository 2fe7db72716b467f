"""Concurrent writers never lose an event; one visitor never has two live sessions."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from chatledger import ChatLedger, ManualClock

from .helpers import event_names


def run_together(workers: list[Callable[[], object]]) -> list[object]:
    """Start every worker at the same instant; re-raise the first failure."""
    barrier = threading.Barrier(len(workers))
    results: list[object] = [None] * len(workers)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        barrier.wait()
        try:
            results[i] = workers[i]()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_eight_threads_writing_to_one_session_lose_nothing(ledger: ChatLedger) -> None:
    turn = ledger.receive("v-busy", "start")
    per_thread = 10

    def writer(n: int) -> Callable[[], None]:
        def write() -> None:
            for i in range(per_thread):
                if i % 3 == 0:
                    ledger.set_slot(turn.session_id, f"slot-{n}", i)
                else:
                    ledger.reply(turn.session_id, f"thread {n} message {i}")
        return write

    run_together([writer(n) for n in range(8)])
    state = ledger.session(turn.session_id)
    replies = [m.text for m in state.messages if m.role == "bot"]
    expected = {f"thread {n} message {i}" for n in range(8) for i in range(per_thread) if i % 3}
    assert sorted(replies) == sorted(expected)  # every reply exactly once
    assert state.slots == {f"slot-{n}": 9 for n in range(8)}
    assert state.version == 2 + 8 * per_thread
    assert [m.position for m in state.messages] == list(range(len(state.messages)))


def test_eight_threads_receiving_for_one_visitor_share_one_session(ledger: ChatLedger) -> None:
    results = run_together([lambda i=i: ledger.receive("v-race", f"msg {i}") for i in range(8)])
    session_ids = {turn.session_id for turn in results}  # type: ignore[attr-defined]
    assert len(session_ids) == 1
    [session_id] = session_ids
    assert sum(turn.is_new_session for turn in results) == 1  # type: ignore[attr-defined]
    assert sorted(m.text for m in ledger.session(session_id).messages) == sorted(
        f"msg {i}" for i in range(8)
    )
    visitor = ledger.visitor("v-race")
    assert visitor is not None and visitor.session_ids == (session_id,)


def test_racing_retries_of_one_message_record_it_once(ledger: ChatLedger) -> None:
    results = run_together(
        [lambda: ledger.receive("v-retry", "hi", client_message_id="dup-1") for _ in range(6)]
    )
    session_id = results[0].session_id  # type: ignore[attr-defined]
    assert event_names(ledger, session_id).count("MessageReceived") == 1
    assert sum(not turn.duplicate for turn in results) == 1  # type: ignore[attr-defined]


def test_racing_renewals_after_a_timeout_record_one_timeout_and_one_new_session(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    first = ledger.receive("v-back", "hi")
    clock.advance(hours=2)
    results = run_together([lambda i=i: ledger.receive("v-back", f"back {i}") for i in range(6)])
    assert {t.session_id for t in results} != {first.session_id}  # type: ignore[attr-defined]
    assert len({t.session_id for t in results}) == 1  # type: ignore[attr-defined]
    assert event_names(ledger, first.session_id).count("TimedOut") == 1


def _first_message_in_process(url: str, barrier: Any, out: Any) -> None:
    clock = ManualClock(datetime(2026, 1, 1, 9, tzinfo=UTC))
    barrier.wait(timeout=60)  # open together: table creation races too
    with ChatLedger.open(url, clock=clock) as ledger:
        barrier.wait(timeout=60)  # then the first messages race
        turn = ledger.receive("v-two-servers", "hello from a server")
        out.put(str(turn.session_id))


@pytest.mark.postgres
def test_two_processes_racing_first_messages_leave_one_active_session(postgres_url: str) -> None:
    """Two servers start on a fresh schema at once and see one visitor's first
    message at once: both start cleanly, and exactly one session exists."""
    ctx = mp.get_context("spawn")
    for round_ in range(3):
        barrier = ctx.Barrier(2)
        out = ctx.Queue()
        procs = [
            ctx.Process(target=_first_message_in_process, args=(postgres_url, barrier, out))
            for _ in range(2)
        ]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.join(120)
            assert [p.exitcode for p in procs] == [0, 0]
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        ids = {out.get(timeout=5), out.get(timeout=5)}
        assert len(ids) == 1, f"round {round_}: two sessions {ids}"
        with ChatLedger.open(postgres_url) as check:
            visitor = check.visitor("v-two-servers")
            assert visitor is not None and len(visitor.session_ids) == 1
            state = check.session(visitor.session_ids[0])
            assert len(state.messages) == 2 * (round_ + 1)
