"""Actors (issue 17): every event records who appended it, on SQLite and PostgreSQL.

Every event class of the domain is enumerated (a new one the scenario does not emit fails
the first test), the actor shows in ``events_after`` and the audit export, an API key's
actor lands on the message it wrote, the sweeper's time-outs are ``worker:sweeper``,
events of before read as ``unrecorded``, and an edited actor is caught by ``audit verify``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from chatledger import ChatLedger, InvalidValueError, LogEvent, ManualClock
from chatledger.application.log_retention import remove_archived_sessions
from chatledger.domain.pydantic_aggregates import AggregateSnapshot, DomainEvent
from chatledger.infrastructure.hashchain import event_hash
from eventsourcing.utils import get_topic

from .audit_helpers import RawDB
from .http_helpers import client, make_tokens, service


def domain_event_classes() -> set[str]:
    """Every concrete event class of chatledger's domain (leaves of ``DomainEvent``; no snapshots)."""
    found: set[type] = set()
    todo: list[type] = [DomainEvent]
    while todo:
        cls = todo.pop()
        subs = cls.__subclasses__()
        todo += subs
        if (
            not subs and cls.__module__.startswith("chatledger.domain") and not issubclass(cls, AggregateSnapshot)
            and cls.__name__ != "Created"  # eventsourcing's per-aggregate default, never used: Started/Registered are
        ):
            found.add(cls)
    return {get_topic(c) for c in found}


def _everything(ledger: ChatLedger, clock: ManualClock, tmp_path: Path) -> list[LogEvent]:
    """A scenario that appends every event type (under operator:alice, request r-1): the events
    it appended, those that log retention removed at its end included."""
    with ledger.acting_as("operator:alice", request_id="r-1"):
        turn = ledger.receive("v-ann", "hello")
        sid = turn.session_id
        ledger.reply(sid, "hi")
        ledger.set_slot(sid, "size", "M")
        ledger.clear_slot(sid, "size")
        ledger.start_task(sid, "order")
        ledger.complete_task(sid, "order")
        ledger.link_identity("v-ann", "user-ann")
        ledger.end_session(sid)
        idle = ledger.receive("v-ben", "anyone?").session_id
        ledger.receive("v-eve", "erase me")
        clock.advance(hours=3)
        assert ledger.sweep() >= 1  # the time-out is the sweeper's: worker:sweeper, request r-1 kept
        clock.advance(days=3)
        ledger.catch_up()
        assert ledger.archive_closed_sessions(timedelta(days=1), tmp_path / "archive").archived >= 1
        ledger.erase(visitor_id="v-eve")
        before_removal = ledger.events_after(0, limit=10_000)
        assert remove_archived_sessions(ledger, timedelta(days=1), tmp_path / "archive").removed_sessions >= 1
    assert idle
    removed_too = {e.position for e in before_removal}
    return before_removal + [e for e in ledger.events_after(0, limit=10_000) if e.position not in removed_too]


def test_every_event_type_records_its_actor(ledger: ChatLedger, clock: ManualClock, tmp_path: Path) -> None:
    events = _everything(ledger, clock, tmp_path)
    kinds = domain_event_classes()
    assert len(kinds) >= 16
    assert kinds <= {e.topic for e in events}, "the scenario must emit every event type"
    for e in events:
        expected = "worker:sweeper" if e.type == "Session.TimedOut" else "operator:alice"
        assert (e.topic, e.actor, e.request_id) == (e.topic, expected, "r-1")
    assert ledger.verify().ok


def test_the_default_and_the_setting_and_bad_actors(database_url: str) -> None:
    with ChatLedger.open(database_url) as ledger:
        ledger.receive("v-1", "hello")
        assert {e.actor for e in ledger.events_after(0)} == {"unknown"}
        with pytest.raises(InvalidValueError):
            with ledger.acting_as('operator:"alice"'):
                ledger.receive("v-1", "never written")
        assert len(ledger.events_after(0)) == 4
    with ChatLedger.open(database_url, actor="service:support-bot") as ledger:
        ledger.receive("v-2", "hello")
        with ledger.acting_as("operator:bob"):
            ledger.receive("v-2", "again")
        assert [e.actor for e in ledger.events_after(4)] == ["service:support-bot"] * 4 + ["operator:bob"]


def test_the_audit_export_names_the_actor(ledger: ChatLedger) -> None:
    with ledger.acting_as("service:crm", request_id="case-9"):
        sid = ledger.receive("v-1", "hello").session_id
    out = io.StringIO()
    ledger.export_audit(out, session_id=sid)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [x for x in lines if x["record"] == "event"]
    assert events and all((x["actor"], x["request_id"]) == ("service:crm", "case-9") for x in events)
    assert all(x["stored_state"].startswith('{"$actor":"service:crm","$request":"case-9",') for x in events)
    assert "actor" in lines[0]["fields"] and lines[-1]["ok"]


def test_an_edited_actor_is_caught_by_verify(database_url: str) -> None:
    with ChatLedger.open(database_url, seal_every_events=0) as ledger:
        with ledger.acting_as("api-key:mallory"):
            sid = ledger.receive("v-1", "who wrote this?").session_id
        ledger.receive("v-2", "another")
        ledger.seal()
    raw = RawDB(database_url)
    state = raw.state(sid, 2)
    assert state.startswith(b'{"$actor":"api-key:mallory",')
    forged = state.replace(b"api-key:mallory", b"operator:nobody", 1)
    raw.set_state(sid, 2, forged)
    with ChatLedger.open(database_url) as fresh:
        report = fresh.verify()
    assert [(b.kind, b.version) for b in report.breaks] == [("altered event", 2)]
    # ... and with its hash row re-hashed (and the next one's link), the seal over the range breaks
    prev = raw.execute("SELECT event_hash FROM chatledger_event_hashes WHERE originator_id=? AND originator_version=1",
                       (raw.id_param(sid),))[0][0]
    rehashed = event_hash(bytes(prev), sid, 2, get_topic_of(raw, sid, 2), forged)
    raw.execute("UPDATE chatledger_event_hashes SET event_hash=? WHERE originator_id=? AND originator_version=2",
                (rehashed, raw.id_param(sid)))
    following = raw.execute(f"SELECT originator_version, topic, state FROM {raw.events} WHERE originator_id=? "
                            "AND originator_version>2 ORDER BY originator_version", (raw.id_param(sid),))
    last = rehashed
    for version, topic, st in following:
        last = event_hash(last, sid, version, topic, bytes(st))
        raw.execute("UPDATE chatledger_event_hashes SET event_hash=? WHERE originator_id=? AND originator_version=?",
                    (last, raw.id_param(sid), version))
    with ChatLedger.open(database_url) as fresh:
        kinds = [b.kind for b in fresh.verify().breaks]
    assert kinds == ["broken seal"]


def get_topic_of(raw: RawDB, sid: object, version: int) -> str:
    rows = raw.execute(f"SELECT topic FROM {raw.events} WHERE originator_id=? AND originator_version=?",
                       (raw.id_param(sid), version))  # type: ignore[arg-type]
    return str(rows[0][0])


def test_events_stored_before_actors_read_as_unrecorded(database_url: str) -> None:
    with ChatLedger.open(database_url, seal_every_events=0) as ledger:
        sid = ledger.receive("v-1", "hello").session_id
        ledger.seal()
    raw = RawDB(database_url)
    rows = raw.execute(f"SELECT originator_id, originator_version FROM {raw.events}")
    for oid, version in rows:  # as a release before actors stored them (the bytes, re-hashed below)
        from uuid import UUID

        aggregate = oid if not isinstance(oid, str) else UUID(oid)
        state = raw.state(aggregate, version)
        raw.set_state(aggregate, version, b"{" + state[state.index(b",") + 1 :])
    raw.execute("DELETE FROM chatledger_event_hashes")
    raw.execute("DELETE FROM chatledger_seals")
    with ChatLedger.open(database_url) as old:
        assert {e.actor for e in old.events_after(0)} == {"unrecorded"}
        assert [m.text for m in old.session(sid).messages] == ["hello"]


def test_an_api_keys_actor_lands_on_the_message_it_wrote(database_url: str, clock: ManualClock) -> None:
    tokens = make_tokens(database_url)
    with ChatLedger.open(database_url) as ledger:
        bot_key = next(k for k in ledger.api_keys.list() if k.name == "bot key")
    with service(database_url, clock) as base, client(base, tokens["bot"]) as http:
        answer = http.post("/v1/visitors/v-ana/messages", json={"text": "Opening hours?"},
                           headers={"x-request-id": "req-77"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "req-77"
        sid = answer.json()["session_id"]
        assert http.post(f"/v1/sessions/{sid}/replies", json={"text": "9 to 6."}).status_code == 200
    with ChatLedger.open(database_url) as ledger:
        events = ledger.events_after(0, limit=1000)
    received = next(e for e in events if e.type == "Session.MessageReceived")
    assert (received.actor, received.request_id) == (f"api-key:{bot_key.key_id}", "req-77")
    sent = next(e for e in events if e.type == "Session.MessageSent")
    assert sent.actor == f"api-key:{bot_key.key_id}" and sent.request_id not in (None, "req-77")


@pytest.mark.slow  # two console-script subprocesses
def test_the_cli_records_the_operator_or_actor(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url) as ledger:
        ledger.receive("v-eve", "erase me")
    env = {**os.environ, "USER": "alice", "LOGNAME": "alice"}
    cli = [sys.executable, "-m", "chatledger"]
    done = subprocess.run([*cli, "erase", "--visitor", "v-eve", "-d", sqlite_url],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([*cli, "--actor", "not an actor", "erase", "--visitor", "v-eve", "-d", sqlite_url],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "actor" in bad.stderr
    with ChatLedger.open(sqlite_url) as ledger:
        erased = [e for e in ledger.events_after(0) if e.type in ("Visitor.DataErased", "Session.ContentErased")]
    assert erased and {e.actor for e in erased} == {"operator:alice"}


def test_commands_batched_in_one_transaction_keep_their_own_actors(sqlite_url: str) -> None:
    """Group commit writes several callers' events in one transaction: each event still names its own caller."""
    import threading

    with ChatLedger.open(sqlite_url) as ledger:
        store = ledger.events

        def caller(name: str) -> None:
            with ledger.acting_as(f"service:{name}"):
                ledger.receive(f"v-{name}", f"from {name}")

        with store.hold():  # type: ignore[attr-defined]
            threads = [threading.Thread(target=caller, args=(n,)) for n in ("a", "b", "c")]
            for t in threads:
                t.start()
            while store.waiting() < 3:  # type: ignore[attr-defined]
                threading.Event().wait(0.01)
        for t in threads:
            t.join()
        assert store.batches >= 1  # type: ignore[attr-defined]
        events = ledger.events_after(0)
    assert {(e.data.get("visitor_id") or e.stream, e.actor) for e in events if e.type == "Visitor.Registered"} == {
        ("v-a", "service:a"), ("v-b", "service:b"), ("v-c", "service:c")
    }


def test_the_async_ledger_carries_the_actor_into_its_workers(sqlite_url: str) -> None:
    import asyncio

    from chatledger.aio import AsyncChatLedger

    async def run() -> list[tuple[str, str | None]]:
        async with AsyncChatLedger.open(sqlite_url) as ledger:
            with ledger.acting_as("service:bot", request_id="q1"):
                await ledger.receive("v-1", "hi")
            return [(e.actor, e.request_id) for e in await ledger.events_after(0)]

    assert set(asyncio.run(run())) == {("service:bot", "q1")}


def test_history_and_audit_replay_show_the_actor(sqlite_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(sqlite_url, clock=clock) as ledger:
        sid = ledger.receive("v-1", "hello").session_id
        with ledger.acting_as("operator:carol", request_id="t-5"):
            ledger.set_slot(sid, "size", "M")
        steps = list(ledger.history(sid))
        event, state = steps[-1]  # still a pair
        assert state.slots == {"size": "M"} and type(event).__name__ == "SlotSet"
        assert [(s.actor, s.request_id) for s in steps] == [("unknown", None)] * 2 + [("operator:carol", "t-5")]
    from chatledger.entrypoints.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["audit", "replay", str(sid), "-d", sqlite_url, "--json"])
    assert result.exit_code == 0, result.output
    assert [s["actor"] for s in json.loads(result.output)["steps"]] == ["unknown", "unknown", "operator:carol"]


def test_an_event_re_serialized_by_hand_still_reads_with_its_actor(database_url: str) -> None:
    """A tool that rewrites the JSON (spaces, another key order) alters the event: verify says so,
    and every reader still decodes it, actor and all, instead of failing on the $actor key."""
    with ChatLedger.open(database_url) as ledger:
        with ledger.acting_as("api-key:k1", request_id="r-9"):
            sid = ledger.receive("v-1", "hello").session_id
            ledger.reply(sid, "hi")
            ledger.set_slot(sid, "size", "M")
    raw = RawDB(database_url)
    for version in (2, 3, 4):  # a message, a reply and a slot: each decoder's path
        state = json.loads(raw.state(sid, version))
        raw.set_state(sid, version, json.dumps(dict(reversed(list(state.items())))).encode())
    with ChatLedger.open(database_url) as fresh:
        assert [b.kind for b in fresh.verify().breaks] == ["altered event"] * 3
        events = [e for e in fresh.events_after(0) if e.stream == str(sid)]
        assert {(e.actor, e.request_id) for e in events} == {("api-key:k1", "r-9")}
        assert [m.text for m in fresh.session(sid).messages] == ["hello", "hi"]
        assert [(s.actor, s.request_id) for s in fresh.history(sid)][-1] == ("api-key:k1", "r-9")
        out = io.StringIO()
        fresh.export_audit(out, session_id=sid)
    assert json.loads(out.getvalue().splitlines()[-1])["ok"] is False
