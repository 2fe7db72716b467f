"""Replay from the log: ``history()``, ``replay()`` and ``chatledger audit replay``."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta
from uuid import uuid4

import pytest
from chatledger import (
    ChatLedger,
    InvalidCommandError,
    ManualClock,
    SessionState,
    UnknownSessionError,
)
from chatledger.entrypoints.cli import app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from .conftest import POSTGRES_URL, drop_schema, require_postgres
from .test_replay_property import POLICY, VISITORS, apply, command
from .helpers import examples


def test_history_yields_each_event_with_the_state_after_it(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "hello")
    clock.advance(minutes=1)
    ledger.reply(turn.session_id, "hi, how can I help?")
    ledger.set_slot(turn.session_id, "order", "A-1")
    ledger.start_task(turn.session_id, "refund")
    ledger.complete_task(turn.session_id, "refund")
    ledger.end_session(turn.session_id)

    steps = list(ledger.history(turn.session_id))
    assert [type(e).__name__ for e, _ in steps] == [
        "Started", "MessageReceived", "MessageSent", "SlotSet", "TaskStarted", "TaskCompleted", "Ended",
    ]
    assert [s.version for _, s in steps] == [1, 2, 3, 4, 5, 6, 7]
    assert [len(s.messages) for _, s in steps] == [0, 1, 2, 2, 2, 2, 2]
    assert steps[3].state.slots == {"order": "A-1"} and steps[2].state.slots == {}
    assert steps[4].state.open_tasks == ("refund",) and steps[5].state.completed_tasks == ("refund",)
    assert steps[-1].state.status == "ended"
    assert steps[-1].state == ledger.session(turn.session_id)
    # version= stops after that event
    assert [s.version for _, s in ledger.history(turn.session_id, version=3)] == [1, 2, 3]


def test_history_reads_the_log_not_the_snapshot_or_cache(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock, snapshot_interval=2) as ledger:
        turn = ledger.receive("v-1", "one")
        for i in range(5):
            ledger.reply(turn.session_id, f"reply {i}")
        assert ledger.snapshots is not None
        assert list(ledger.snapshots.get(turn.session_id))  # snapshots were taken
        # history() starts from version 1 anyway: every event, not the snapshot.
        steps = list(ledger.history(turn.session_id))
        assert [e.originator_version for e, _ in steps] == list(range(1, 8))
        assert steps[-1].state == ledger.session(turn.session_id)


def test_replay_until_a_time_before_the_timeout_was_noticed(ledger: ChatLedger, clock: ManualClock) -> None:
    turn = ledger.receive("v-1", "hi")
    start = clock()
    clock.advance(hours=2)
    live_then = ledger.session(turn.session_id)  # expired, not yet recorded
    t = clock()
    clock.advance(minutes=5)
    ledger.receive("v-1", "back")  # records TimedOut (occurred at start+30min, detected now)
    assert ledger.replay(turn.session_id, until=t) == live_then
    assert live_then.version == 2 and live_then.status == "timed_out"
    assert ledger.replay(turn.session_id, until=clock()).version == 3
    at_start = ledger.replay(turn.session_id, until=start)
    assert at_start.version == 2 and [m.text for m in at_start.messages] == ["hi"]
    assert at_start.status == "active" and at_start.last_activity_at == start
    with pytest.raises(InvalidCommandError, match="had not started"):
        ledger.replay(turn.session_id, until=start - timedelta(seconds=1))


def test_history_refuses_unknown_and_non_session_ids(ledger: ChatLedger) -> None:
    with pytest.raises(UnknownSessionError):
        list(ledger.history(uuid4()))
    ledger.receive("v-1", "hi")
    from chatledger.domain.visitor import visitor_aggregate_id

    with pytest.raises(UnknownSessionError):
        list(ledger.history(visitor_aggregate_id("v-1")))
    with pytest.raises(InvalidCommandError):
        list(ledger.history(uuid4(), version=0))


def run_and_capture(url: str, commands: list[tuple[object, ...]]) -> None:
    clock = ManualClock()
    seen: list[tuple[datetime, str, SessionState]] = []

    def capture(ledger: ChatLedger) -> None:
        for v in VISITORS:
            state = ledger.visitor(v)
            for sid in state.session_ids if state else ():
                seen.append((clock(), str(sid), ledger.session(sid)))

    with ChatLedger.open(url, clock=clock, policy=POLICY, snapshot_interval=3) as ledger:
        for cmd in commands:
            if cmd[0] == "wait":
                capture(ledger)  # the last state at this time, before the clock moves
            apply(ledger, clock, cmd)
        capture(ledger)
        for t, sid, live in seen:
            assert ledger.replay(sid, until=t) == live, (t, sid)


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(command, max_size=30))
def test_replay_at_a_past_time_equals_what_the_live_api_returned_then_sqlite(
    commands: list[tuple[object, ...]],
) -> None:
    """Law: for any command sequence (timeouts, links, rejected commands included),
    replaying a session from the log until time t equals the state the live API
    (cache and snapshots on) returned at t, for every session and every t."""
    with tempfile.TemporaryDirectory() as tmp:
        run_and_capture(f"sqlite:///{tmp}/replay.db", commands)


@pytest.mark.postgres
@settings(max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(command, max_size=25))
def test_replay_at_a_past_time_equals_what_the_live_api_returned_then_postgres(
    commands: list[tuple[object, ...]],
) -> None:
    """Same law on PostgreSQL."""
    require_postgres()
    schema = f"t_{uuid4().hex[:16]}"
    try:
        run_and_capture(f"{POSTGRES_URL}?schema={schema}", commands)
    finally:
        drop_schema(schema)


def test_cli_audit_replay_prints_steps_and_json(sqlite_url: str) -> None:
    clock = ManualClock()
    with ChatLedger.open(sqlite_url, clock=clock) as ledger:
        turn = ledger.receive("v-1", "first words")
        t = clock()
        clock.advance(minutes=1)
        ledger.reply(turn.session_id, "later words")
    runner = CliRunner()
    out = runner.invoke(app, ["audit", "replay", str(turn.session_id), "-d", sqlite_url])
    assert out.exit_code == 0, out.output
    assert "MessageReceived" in out.output and "later words" in out.output
    past = runner.invoke(
        app, ["audit", "replay", str(turn.session_id), "-d", sqlite_url, "--until", t.isoformat(), "--json"]
    )
    assert past.exit_code == 0, past.output
    doc = json.loads(past.output)
    assert [s["type"] for s in doc["steps"]] == ["Started", "MessageReceived"]
    assert doc["steps"][-1]["state"]["messages"][0]["text"] == "first words"
    assert "later words" not in past.output
    by_version = json.loads(
        runner.invoke(app, ["audit", "replay", str(turn.session_id), "-d", sqlite_url, "--version", "1", "--json"]).output
    )
    assert len(by_version["steps"]) == 1
