"""Content keys and key owners are written in the event transaction, and checked there.

A new visitor's key (made in memory by the mapper) and a new session's key owner
row are inserted by the recorder with the events encrypted under them; the
recorder then checks that every key the batch used is in the store and is the
batch's visitor's, and raises a conflict if not (another writer made the
visitor's key first, or an erasure destroyed it), so the command is re-encoded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from chatledger import ChatLedger
from chatledger.infrastructure import recording
from chatledger.infrastructure.recording import KeyRow

from .audit_helpers import RawDB
from .helpers import hold_uncommitted_key

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


@contextmanager
def counting_stale_keys(ledger: ChatLedger) -> Iterator[list[list[str]]]:
    """Record each stale-key conflict the ledger's recorder reports (the kids it names)."""
    recorder: Any = ledger.recorder
    hook = recorder.on_stale_keys
    seen: list[list[str]] = []

    def wrapped(kids: Any, visitors: Any, current: Any) -> None:
        seen.append([*kids])
        hook(kids, visitors, current)

    recorder.on_stale_keys = wrapped
    try:
        yield seen
    finally:
        recorder.on_stale_keys = hook


def key_rows(raw: RawDB, visitor_id: str) -> list[str]:
    return [r[0] for r in raw.execute("SELECT kid FROM chatledger_keys WHERE visitor_id=?", (visitor_id,))]


def message_kid(raw: RawDB, session_id: UUID, version: int) -> str:
    return json.loads(raw.state(session_id, version))["text"]["kid"]


def test_two_ledgers_racing_a_new_visitor_end_under_one_key(database_url: str) -> None:
    """B made its own key for a new visitor in memory; A commits the visitor's
    first message (and key) first. B's write conflicts and is re-encoded under
    A's key: one key row, every message readable."""
    raw = RawDB(database_url)
    a = ChatLedger.open(database_url)
    b = ChatLedger.open(database_url)
    try:
        own = KeyRow((str(uuid4()), "v-new", b"\x01" * 32))
        hold_uncommitted_key(b, "v-new", own)  # B encoded with this, not yet committed
        sid = a.receive("v-new", "hello from a", at=T0).session_id
        with counting_stale_keys(b) as stale:
            b.receive("v-new", "hello from b", at=T0 + timedelta(seconds=1))
        assert stale == [[own[0]]]
        assert key_rows(raw, "v-new") == [message_kid(raw, sid, 2)] == [message_kid(raw, sid, 3)]
        assert own[0] not in key_rows(raw, "v-new")
    finally:
        a.close()
        b.close()
    with ChatLedger.open(database_url, cache_size=0) as fresh:
        assert [m.text for m in fresh.session(sid).messages] == ["hello from a", "hello from b"]


def test_two_ledgers_racing_first_messages_in_threads(database_url: str) -> None:
    """The same race for real: two ledgers ("processes") send the first message
    of the same new visitors at the same moment."""
    raw = RawDB(database_url)
    a = ChatLedger.open(database_url)
    b = ChatLedger.open(database_url)
    visitors = [f"race-{n}" for n in range(12)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(ledger: ChatLedger, name: str) -> None:
        try:
            for visitor in visitors:
                barrier.wait(timeout=30)
                ledger.receive(visitor, f"{name} to {visitor}")
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(ledger, name)) for ledger, name in ((a, "a"), (b, "b"))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        a.close()
        b.close()
    assert not errors
    with ChatLedger.open(database_url, cache_size=0) as fresh:
        for visitor in visitors:
            assert len(key_rows(raw, visitor)) == 1
            turn = fresh.receive(visitor, "again")
            texts = sorted(m.text for m in fresh.session(turn.session_id).messages)
            assert texts == sorted([f"a to {visitor}", f"b to {visitor}", "again"])


def test_a_write_under_a_key_erased_by_another_ledger_is_reencoded(database_url: str) -> None:
    """B has the visitor's key cached; A erases the visitor (destroying it). B's
    next write conflicts in its transaction and is re-encoded under a new key:
    nothing is ever stored under the destroyed key."""
    raw = RawDB(database_url)
    a = ChatLedger.open(database_url)
    b = ChatLedger.open(database_url)
    try:
        sid = a.receive("v-1", "my secret", at=T0).session_id
        b.reply(sid, "noted", at=T0 + timedelta(seconds=1))  # B caches the key
        [old] = key_rows(raw, "v-1")
        a.erase(visitor_id="v-1", at=T0 + timedelta(seconds=2))
        assert key_rows(raw, "v-1") == []
        with counting_stale_keys(b) as stale:
            turn = b.receive("v-1", "new content", at=T0 + timedelta(seconds=3))
        assert stale == [[old]]
        [new] = key_rows(raw, "v-1")
        assert new != old
        kids = {
            json.loads(bytes(r[0]))["text"]["kid"]
            for r in raw.execute(f"SELECT state FROM {raw.events}")
            if b'"text":{"$enc"' in bytes(r[0])
        }
        assert kids == {old, new}
        new_states = raw.execute(
            f"SELECT state FROM {raw.events} WHERE originator_id=? ORDER BY originator_version DESC LIMIT 1",
            (raw.id_param(turn.session_id),),
        )
        assert json.loads(bytes(new_states[0][0]))["text"]["kid"] == new
    finally:
        a.close()
        b.close()
    with ChatLedger.open(database_url, cache_size=0) as fresh:
        texts = [m.text for m in fresh.session(turn.session_id).messages]
    assert texts[-1] == "new content"
    assert texts[:2] == ["[erased]", "[erased]"]


def test_a_failed_batch_leaves_no_key_owner_or_event_rows(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = RawDB(database_url)
    with ChatLedger.open(database_url) as ledger:
        ledger.receive("v-old", "before", at=T0)
        counts = {
            t: raw.execute(f"SELECT count(*) FROM {t}")[0][0]
            for t in (raw.events, "chatledger_keys", "chatledger_key_subjects", "chatledger_event_hashes")
        }

        def boom(stored_events: Any) -> list[str]:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(recording, "erased_visitor_ids", boom)  # runs after the key rows
        with pytest.raises(RuntimeError, match="disk on fire"):
            ledger.receive("v-new", "first words", at=T0 + timedelta(seconds=1))
        assert counts == {t: raw.execute(f"SELECT count(*) FROM {t}")[0][0] for t in counts}
        monkeypatch.undo()
        turn = ledger.receive("v-new", "first words", at=T0 + timedelta(seconds=2))
        assert len(key_rows(raw, "v-new")) == 1
    with ChatLedger.open(database_url, cache_size=0) as fresh:
        assert [m.text for m in fresh.session(turn.session_id).messages] == ["first words"]


def test_a_turn_costs_one_write_transaction_and_no_key_reads(sqlite_url: str) -> None:
    """A new visitor's first message: one committed transaction (the events, key
    and subject together); an existing visitor's turn: no key look-up."""
    with ChatLedger.open(sqlite_url) as ledger:
        datastore: Any = ledger.recorder.datastore  # type: ignore[attr-defined]
        recorder: Any = ledger.recorder
        calls: list[str] = []
        transaction = datastore.transaction

        @contextmanager
        def counted(*, commit: bool) -> Iterator[Any]:
            calls.append("write" if commit else "read")
            with transaction(commit=commit) as c:
                yield c

        datastore.transaction = counted
        for name in ("key_by_id", "active_key"):
            monkey = getattr(recorder, name)
            setattr(recorder, name, lambda *a, _n=name, _m=monkey, **k: (calls.append(_n), _m(*a, **k))[1])
        turn = ledger.receive("v-fresh", "hello", at=T0)
        assert calls.count("write") == 1
        assert not {"key_by_id", "active_key"} & set(calls)
        calls.clear()
        ledger.reply(turn.session_id, "hi", at=T0 + timedelta(seconds=1))
        ledger.receive("v-fresh", "more", at=T0 + timedelta(seconds=2))
        assert calls.count("write") == 2
        assert not {"key_by_id", "active_key"} & set(calls)


def test_a_snapshot_under_a_key_that_is_gone_is_not_written(sqlite_url: str) -> None:
    """Snapshots are written by another recorder: it checks the key in its own
    write transaction and skips the (derived) snapshot if the key is gone."""
    a = ChatLedger.open(sqlite_url, snapshot_interval=4)
    b = ChatLedger.open(sqlite_url, snapshot_interval=4)
    raw = RawDB(sqlite_url)
    try:
        sid = a.receive("v-1", "secret", at=T0).session_id
        b.reply(sid, "ok", at=T0 + timedelta(seconds=1))
        [old] = key_rows(raw, "v-1")
        # The key vanishes after B's event write checked it, before its snapshot.
        real_put = b.snapshots.put  # type: ignore[union-attr]

        def put(events: Any, **kw: Any) -> Any:
            raw.execute("DELETE FROM chatledger_keys WHERE kid=?", (old,))
            return real_put(events, **kw)

        b.snapshots.put = put  # type: ignore[union-attr,method-assign]
        b.reply(sid, "version 4: snapshot due", at=T0 + timedelta(seconds=2))
        assert raw.execute("SELECT count(*) FROM stored_snapshots")[0][0] == 0
    finally:
        a.close()
        b.close()


def test_a_returning_visitor_met_by_a_fresh_process_keeps_one_key(database_url: str) -> None:
    """A returning visitor's new session in a process with no key cached for
    them: the mapper looks the visitor's key up (a later session is not a new
    visitor's), so the write commits at once, under the one key row."""
    raw = RawDB(database_url)
    with ChatLedger.open(database_url) as a:
        first = a.receive("v-back", "first visit", at=T0).session_id
    [kid] = key_rows(raw, "v-back")
    with ChatLedger.open(database_url) as b:
        with counting_stale_keys(b) as stale:
            turn = b.receive("v-back", "hours later", at=T0 + timedelta(hours=3))
        assert turn.session_id != first and turn.is_returning
        assert stale == []
        assert key_rows(raw, "v-back") == [kid]
    with ChatLedger.open(database_url, cache_size=0) as fresh:
        assert [m.text for m in fresh.session(first).messages] == ["first visit"]
        assert [m.text for m in fresh.session(turn.session_id).messages] == ["hours later"]


def test_a_key_destroyed_before_its_maker_learned_it_was_committed_is_never_resurrected(
    database_url: str,
) -> None:
    """A commits a new visitor's first message (its new key in the same
    transaction) but has not yet been told the key is committed; meanwhile B
    erases the visitor, and another thread of A replies with the key it still
    holds as new. Re-inserting that key would bring the destroyed key back and
    make the erased content readable again: the destroyed key ids are kept, and
    the reply is re-encoded under a fresh key."""
    raw = RawDB(database_url)
    a = ChatLedger.open(database_url)
    b = ChatLedger.open(database_url)
    recorder: Any = a.recorder
    confirm = recorder.on_keys_confirmed
    committed, release = threading.Event(), threading.Event()

    def late_confirm(rows: Any) -> None:
        committed.set()
        release.wait(10)
        confirm(rows)

    recorder.on_keys_confirmed = late_confirm
    first = threading.Thread(target=lambda: a.receive("v-1", "my secret", at=T0))
    first.start()
    try:
        assert committed.wait(10)
        recorder.on_keys_confirmed = confirm
        [k1] = key_rows(raw, "v-1")
        sid = b.visitor("v-1").session_ids[-1]  # type: ignore[union-attr]
        assert b.erase(visitor_id="v-1", at=T0 + timedelta(seconds=1)).key_ids == (k1,)
        # The reply is encoded (in this thread, under the key A still holds as new) before A's
        # first write is confirmed; then that write may finish (it holds the write turn).
        mapper: Any = a.mapper
        to_stored = mapper.to_stored_event

        def encoded_then_release(event: Any) -> Any:
            stored = to_stored(event)
            release.set()
            return stored

        mapper.to_stored_event = encoded_then_release
        with counting_stale_keys(a) as stale:
            a.reply(sid, "after erasure", at=T0 + timedelta(seconds=2))
        mapper.to_stored_event = to_stored
        assert stale == [[k1]]
        [k2] = key_rows(raw, "v-1")
        assert k2 != k1
    finally:
        release.set()
        first.join()
        a.close()
        b.close()
    with ChatLedger.open(database_url, cache_size=0) as fresh:
        texts = [getattr(e, "text", None) for e in fresh.session_events(sid)]
        history = [m.text for m in list(fresh.history(sid))[1].state.messages]
    assert "my secret" not in texts and texts[1] == "[erased]" and texts[-1] == "after erasure"
    assert history == ["[erased]"]


def test_a_postgres_lock_timeout_is_retried_as_the_library_does(postgres_url: str) -> None:
    """Our PostgreSQL recorder replaces the library's ``insert_events``; it keeps
    its retry of lock timeouts and dropped connections (10 attempts, 0.2 s apart)."""
    import time

    import psycopg
    from psycopg import sql

    with ChatLedger.open(postgres_url) as ledger:
        recorder: Any = ledger.recorder
        recorder.lock_table_statements[0] = sql.SQL("SET LOCAL lock_timeout = '300ms'")
        ledger.receive("v-1", "hello", at=T0)
        schema = recorder.datastore.schema
        locked = threading.Event()

        def hold_the_table() -> None:
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as conn:
                conn.execute(
                    sql.SQL("LOCK TABLE {}.{} IN EXCLUSIVE MODE").format(
                        sql.Identifier(schema), sql.Identifier(recorder.events_table_name)
                    )
                )
                locked.set()
                time.sleep(0.8)

        holder = threading.Thread(target=hold_the_table)
        holder.start()
        assert locked.wait(5)
        turn = ledger.receive("v-2", "hi", at=T0)  # times out at least once, then succeeds
        holder.join()
        assert ledger.session(turn.session_id).messages[0].text == "hi"
