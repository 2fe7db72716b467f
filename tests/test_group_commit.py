"""Issue 12: group commit (concurrent commands of one process share one
transaction) and commands written against the cached aggregate, on SQLite and
PostgreSQL: each command stays atomic with its own outcome, projections see
every event exactly once, and concurrent writers lose nothing."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from chatledger import ChatLedger, FieldTooLargeError, SessionClosedError, ValueRefusedError
from chatledger.application.commit_queue import CommitOutcomeUnknownError, GroupCommitEventStore

from .helpers import event_names, inserts_paused_until, log_head, lost_batch, unicode_checks_off


def store_of(ledger: ChatLedger) -> GroupCommitEventStore:
    store = ledger.events
    assert isinstance(store, GroupCommitEventStore)
    return store


def batched(ledger: ChatLedger, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads while the ledger's write turn is held, so they
    queue up and are written as one batch; each call's result or exception."""
    store = store_of(ledger)
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as err:  # noqa: BLE001 - returned to the test
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    before = store.batches + store.split_batches
    with store.hold():
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while store.waiting() < len(calls):
            assert time.monotonic() < deadline, "the callers did not queue up"
            time.sleep(0.005)
    for t in threads:
        t.join()
    assert store.batches + store.split_batches > before, "no batch of several callers was written"
    return results


def test_a_stale_command_in_a_batch_fails_alone_and_the_others_land(database_url: str) -> None:
    """One command of a batch decided on a stale cached copy: another ledger
    (as another process would) ended its session. The batch is split, the
    others commit; the stale one conflicts alone, is decided again on a fresh
    read and gets its own clear error (the session is closed), with nothing of
    it appended."""
    ledger = ChatLedger.open(database_url)
    other = ChatLedger.open(database_url)
    try:
        sids = [ledger.receive(f"v{i}", "hi").session_id for i in range(4)]
        other.end_session(sids[3])  # ledger's cached copy of sids[3] is stale (still active) now
        events = len(event_names(other, sids[3]))
        splits = store_of(ledger).split_batches
        results = batched(ledger, [(lambda s=s: ledger.reply(s, "ok")) for s in sids])
        assert store_of(ledger).split_batches == splits + 1
        assert all(not isinstance(r, BaseException) for r in results[:3]), results
        assert isinstance(results[3], SessionClosedError)
        for sid in sids[:3]:
            assert [m.text for m in ledger.session(sid).messages] == ["hi", "ok"]
        assert len(event_names(ledger, sids[3])) == events
        assert [m.text for m in ledger.session(sids[3]).messages] == ["hi"]
        assert ledger.verify().ok
    finally:
        other.close()
        ledger.close()


def test_a_command_on_a_stale_cached_copy_is_decided_again_without_costing_a_retry(database_url: str) -> None:
    """With one attempt allowed, a reply whose cached session is stale (another
    ledger wrote to it) still lands: the cached run is free, the one attempt
    reads the store."""
    ledger = ChatLedger.open(database_url, conflict_retries=1)
    other = ChatLedger.open(database_url)
    try:
        sid = ledger.receive("v", "hi").session_id
        other.reply(sid, "written elsewhere")
        assert ledger.reply(sid, "after").text == "after"
        assert [m.text for m in ledger.session(sid).messages] == ["hi", "written elsewhere", "after"]
    finally:
        other.close()
        ledger.close()


@pytest.mark.postgres
def test_a_value_postgres_refuses_inside_a_batch_rolls_back_only_its_command(postgres_url: str) -> None:
    """A NUL in a text parameter aborts the whole PostgreSQL transaction: the
    batch is split, the others land, the bad command gets ValueRefusedError
    and nothing of it (events, hash rows, keys) is written."""
    ledger = ChatLedger.open(postgres_url)
    try:
        sids = [ledger.receive(f"v{i}", "hi").session_id for i in range(3)]
        head = log_head(ledger)
        calls: list[Callable[[], Any]] = [(lambda s=s: ledger.reply(s, "ok")) for s in sids]
        calls.append(lambda: ledger.receive("bad\x00visitor", "hello"))
        with unicode_checks_off():
            results = batched(ledger, calls)
        assert all(not isinstance(r, BaseException) for r in results[:3]), results
        assert isinstance(results[3], ValueRefusedError)
        for sid in sids:
            assert [m.text for m in ledger.session(sid).messages] == ["hi", "ok"]
        assert len(list(ledger.recorder.select_notifications(head + 1, 100))) == 3
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_each_caller_of_a_batch_gets_its_own_notification_ids(database_url: str) -> None:
    ledger = ChatLedger.open(database_url)
    try:
        sids = [ledger.receive(f"v{i}", "hi").session_id for i in range(5)]
        results = batched(ledger, [(lambda s=s: ledger.reply(s, f"to {s}")) for s in sids])
        for sid, message in zip(sids, results, strict=True):
            assert message.text == f"to {sid}"
            assert event_names(ledger, sid)[-1] == "MessageSent"
        assert ledger.verify().ok
    finally:
        ledger.close()


def test_a_lone_caller_writes_at_once_without_a_batch(database_url: str) -> None:
    ledger = ChatLedger.open(database_url)
    try:
        turn = ledger.receive("v", "hi")
        ledger.reply(turn.session_id, "hello")
        assert store_of(ledger).batches == 0
    finally:
        ledger.close()


def test_writers_in_two_ledgers_and_a_running_projection_apply_every_event_once(database_url: str) -> None:
    """Two ledgers (as two processes) with four threads each write while a third
    ledger's projector catches up in the background: after a last catch-up
    every message is in the transcript exactly once, in order (a projection
    that skipped an event committed out of order would miss it for good)."""
    writers = [ChatLedger.open(database_url) for _ in range(2)]
    reader = ChatLedger.open(database_url)
    turns = 15
    try:
        reader.projector.start(interval=0.005)
        sessions: dict[str, Any] = {}
        errors: list[BaseException] = []

        def write(ledger: ChatLedger, name: str) -> None:
            try:
                sid = ledger.receive(name, "m0 user").session_id
                sessions[name] = sid
                ledger.reply(sid, "m0 bot")
                for i in range(1, turns):
                    ledger.receive(name, f"m{i} user")
                    ledger.reply(sid, f"m{i} bot")
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        threads = [
            threading.Thread(target=write, args=(ledger, f"w{n}-{t}"))
            for n, ledger in enumerate(writers)
            for t in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        reader.projector.stop()
        reader.catch_up()
        expected = [f"m{i} {who}" for i in range(turns) for who in ("user", "bot")]
        for sid in sessions.values():
            assert [m.text for m in reader.transcript(sid).messages] == expected
    finally:
        reader.close()
        for w in writers:
            w.close()


def test_four_writers_on_one_session_lose_nothing(database_url: str) -> None:
    """Four threads of each of two ledgers reply to one session: their saves
    conflict (in a batch and across ledgers) and are retried on fresh reads;
    every message is recorded once."""
    ledgers = [ChatLedger.open(database_url) for _ in range(2)]
    try:
        sid = ledgers[0].receive("v", "hi").session_id
        errors: list[BaseException] = []

        def write(ledger: ChatLedger, name: str) -> None:
            try:
                for i in range(10):
                    ledger.reply(sid, f"{name}-{i}")
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        threads = [threading.Thread(target=write, args=(led, f"{n}.{t}")) for n, led in enumerate(ledgers) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        texts = [m.text for m in ledgers[1].session(sid).messages]
        assert texts[0] == "hi"
        assert sorted(texts[1:]) == sorted(f"{n}.{t}-{i}" for n in range(2) for t in range(2) for i in range(10))
        for name in {t.rsplit("-", 1)[0] for t in texts[1:]}:  # each writer's own order kept
            mine = [t for t in texts[1:] if t.startswith(name + "-")]
            assert mine == [f"{name}-{i}" for i in range(10)]
        assert ledgers[0].verify().ok
    finally:
        for led in ledgers:
            led.close()


@pytest.mark.postgres
def test_a_10_mb_value_is_refused_before_any_lock_and_blocks_no_writer(postgres_url: str) -> None:
    """Hostile-input limits hold on the new path: a 10 MB message (text or
    metadata) is refused by validation while another connection holds the
    events table's lock and this process's write turn is held, so it never
    reaches the store; a writer meanwhile is not held up by it."""
    ledger = ChatLedger.open(postgres_url)
    try:
        sid = ledger.receive("v", "hi").session_id
        huge = "x" * (10 * 1024 * 1024)
        datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
        table = f'"{datastore.schema}"."{ledger.recorder.events_table_name}"'  # type: ignore[attr-defined]
        head = log_head(ledger)
        with datastore.transaction(commit=False) as c, store_of(ledger).hold():
            c.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(FieldTooLargeError):
                ledger.reply(sid, huge)
            with pytest.raises(FieldTooLargeError):
                ledger.receive("v", "hi", metadata={"blob": huge})
            with pytest.raises(FieldTooLargeError):
                ledger.receive("w", huge)
            assert time.monotonic() - started < 5
        done = threading.Event()

        def hostile() -> None:
            while not done.is_set():
                with pytest.raises(FieldTooLargeError):
                    ledger.receive("v", huge, session_id=sid)

        attacker = threading.Thread(target=hostile)
        attacker.start()
        try:
            started = time.monotonic()
            for i in range(10):
                ledger.reply(sid, f"ok {i}")
            assert time.monotonic() - started < 20
        finally:
            done.set()
            attacker.join()
        assert [m.text for m in ledger.session(sid).messages] == ["hi", *(f"ok {i}" for i in range(10))]
        assert len(list(ledger.recorder.select_notifications(head + 1, 100))) == 10
    finally:
        ledger.close()


class Deadline(BaseException):
    """What a caller's deadline raises from its signal handler (a BaseException)."""


def alarm_in(seconds: float, error: BaseException) -> None:
    def handler(*_: Any) -> None:
        raise error

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def test_a_lost_batch_leaves_no_caller_waiting_forever(database_url: str) -> None:
    """An exception right after a leader took a batch off the queue (before
    it is written or marked done): every caller stops with outcome unknown,
    none is written, and the next command writes as before."""
    ledger = ChatLedger.open(database_url)
    try:
        sids = [ledger.receive(f"v{i}", "hi").session_id for i in range(3)]
        store = store_of(ledger)
        results: list[Any] = [None] * 3

        def run(i: int) -> None:
            try:
                results[i] = ledger.reply(sids[i], "lost")
            except Exception as err:  # noqa: BLE001 - returned to the test
                results[i] = err

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(3)]
        with lost_batch(ledger, RuntimeError("interrupted after the take")):
            with store.hold():
                for t in threads:
                    t.start()
                while store.waiting() < 3:
                    time.sleep(0.005)
            for t in threads:
                t.join(20)
        assert not any(t.is_alive() for t in threads), "a caller still waits for a batch that was lost"
        assert all(isinstance(r, CommitOutcomeUnknownError) for r in results), results
        assert store.waiting() == 0
        for sid in sids:
            assert [m.text for m in ledger.session(sid).messages] == ["hi"]
        assert ledger.reply(sids[0], "next").text == "next"
    finally:
        ledger.close()


@pytest.mark.timeout(120, method="thread")
def test_a_caller_interrupted_while_queued_is_not_written_later(database_url: str) -> None:
    ledger = ChatLedger.open(database_url)
    previous = signal.getsignal(signal.SIGALRM)
    try:
        sid = ledger.receive("v1", "hi").session_id
        sid2 = ledger.receive("v2", "hi").session_id
        store = store_of(ledger)
        release = threading.Event()

        def holder() -> None:
            with store.hold():
                release.wait(20)

        held = threading.Thread(target=holder)
        held.start()
        alarm_in(0.3, TimeoutError("the caller's deadline"))
        with pytest.raises(TimeoutError, match="deadline"):
            ledger.reply(sid, "reply that timed out")
        assert store.waiting() == 0
        release.set()
        held.join()
        ledger.reply(sid2, "an unrelated write")
        assert [m.text for m in ledger.session(sid).messages] == ["hi"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        ledger.close()


@pytest.mark.timeout(120, method="thread")
def test_a_caller_interrupted_after_a_leader_took_its_events_is_told_the_outcome_is_unknown(
    database_url: str,
) -> None:
    """Two callers are taken in one batch whose insert is slow; the main
    thread's deadline fires meanwhile, whether it is the leader or waits for
    the other. Its events may be committed: it is told the outcome is
    unknown, never a plain failure; the other caller gets a result or the same."""
    ledger = ChatLedger.open(database_url)
    previous = signal.getsignal(signal.SIGALRM)
    go = threading.Event()
    try:
        sid = ledger.receive("v1", "hi").session_id
        sid2 = ledger.receive("v2", "hi").session_id
        store = store_of(ledger)
        other: list[Any] = []

        def holder() -> None:
            with store.hold():
                while store.waiting() < 2:
                    time.sleep(0.005)

        def caller() -> None:
            try:
                other.append(ledger.reply(sid2, "the other caller"))
            except Exception as err:  # noqa: BLE001 - returned to the test
                other.append(err)

        with inserts_paused_until(ledger, go):
            threads = [threading.Thread(target=holder), threading.Thread(target=caller)]
            for t in threads:
                t.start()
            alarm_in(0.5, Deadline())
            with pytest.raises(Deadline) as raised:
                ledger.reply(sid, "mine")
            go.set()
            for t in threads:
                t.join(20)
        assert "outcome is unknown" in " ".join(getattr(raised.value, "__notes__", []))
        assert len(other) == 1 and (
            isinstance(other[0], CommitOutcomeUnknownError) or other[0].text == "the other caller"
        ), other
        assert store.waiting() == 0
        assert ledger.reply(sid, "next").text == "next"
    finally:
        go.set()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        ledger.close()
