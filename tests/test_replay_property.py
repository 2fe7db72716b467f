"""Replay is deterministic: any command sequence rebuilds the same state elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from chatledger import ChatLedger, ChatLedgerError, ManualClock, SessionPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import POSTGRES_URL, drop_schema, require_postgres
from .helpers import examples

VISITORS = ["v-a", "v-b", "v-c"]
POLICY = SessionPolicy(
    idle_timeout=timedelta(minutes=30),
    task_idle_timeout=timedelta(minutes=45),
    max_session_length=timedelta(hours=3),
    carry_over_slots=frozenset({"lang"}),
)

visitor = st.sampled_from(VISITORS)
command = st.one_of(
    st.tuples(st.just("receive"), visitor, st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=20).filter(str.strip), st.sampled_from([None, "c1", "c2"])),
    st.tuples(st.just("reply"), visitor, st.sampled_from(["ok", "sure", "¿qué?"]), st.sampled_from([None, "r1"])),
    st.tuples(st.just("slot"), visitor, st.sampled_from(["lang", "topic"]), st.one_of(st.none(), st.integers(), st.text(max_size=5))),
    st.tuples(st.just("clear"), visitor, st.sampled_from(["lang", "topic"]), st.none()),
    st.tuples(st.just("task"), visitor, st.sampled_from(["refund", "order"]), st.booleans()),
    st.tuples(st.just("link"), visitor, st.sampled_from(["u-1", "u-2"]), st.none()),
    st.tuples(st.just("end"), visitor, st.none(), st.none()),
    st.tuples(st.just("wait"), st.none(), st.sampled_from([1, 60, 29 * 60, 30 * 60, 31 * 60, 50 * 60, 4 * 3600]), st.none()),
)


def apply(ledger: ChatLedger, clock: ManualClock, cmd: tuple[object, ...]) -> None:
    kind, who, arg, extra = cmd
    if kind == "wait":
        clock.advance(seconds=arg)  # type: ignore[arg-type]
        return
    assert isinstance(who, str)
    current = ledger.visitor(who)
    session_id = current.current_session_id if current else None
    try:
        if kind == "receive":
            ledger.receive(who, arg, client_message_id=extra)  # type: ignore[arg-type]
        elif session_id is None:
            if kind == "link":
                ledger.link_identity(who, arg)  # type: ignore[arg-type]
        elif kind == "reply":
            ledger.reply(session_id, arg, client_message_id=extra)  # type: ignore[arg-type]
        elif kind == "slot":
            ledger.set_slot(session_id, arg, extra, scope="user" if arg == "lang" else "session")  # type: ignore[arg-type]
        elif kind == "clear":
            ledger.clear_slot(session_id, arg)  # type: ignore[arg-type]
        elif kind == "task":
            (ledger.start_task if extra else ledger.complete_task)(session_id, arg)  # type: ignore[arg-type]
        elif kind == "link":
            ledger.link_identity(who, arg)  # type: ignore[arg-type]
        elif kind == "end":
            ledger.end_session(session_id)
    except ChatLedgerError:
        pass  # rejected commands are part of the history too: they must leave no trace


@pytest.fixture(scope="module")
def worker() -> Iterator[subprocess.Popen[str]]:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("replay_worker.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def rebuild_elsewhere(worker: subprocess.Popen[str], url: str, now: str, ids: list[str]) -> dict[str, object]:
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write(f"{url}\t{now}\t{','.join(ids)}\n")
    worker.stdin.flush()
    return json.loads(worker.stdout.readline())  # type: ignore[no-any-return]


def check_replay(url: str, commands: list[tuple[object, ...]], worker: subprocess.Popen[str]) -> None:
    clock = ManualClock()
    with ChatLedger.open(url, clock=clock, policy=POLICY, snapshot_interval=3) as ledger:
        for cmd in commands:
            apply(ledger, clock, cmd)
        ids = [
            str(sid)
            for v in VISITORS
            if (state := ledger.visitor(v)) is not None
            for sid in state.session_ids
        ]
        live = {sid: ledger.session(sid).model_dump(mode="json") for sid in ids}
        now = clock().isoformat()
    assert rebuild_elsewhere(worker, url, now, ids) == live


@pytest.mark.slow
@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(command, max_size=40))
def test_replay_in_a_fresh_process_rebuilds_identical_state_sqlite(
    commands: list[tuple[object, ...]], worker: subprocess.Popen[str]
) -> None:
    """Law: for any command sequence (accepted or rejected), every session rebuilt
    from the stored events in a fresh process, without cache or snapshots, equals
    the state the live ledger (cache and snapshots on) returns."""
    with tempfile.TemporaryDirectory() as tmp:
        check_replay(f"sqlite:///{tmp}/replay.db", commands, worker)


@pytest.mark.postgres
@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(command, max_size=30))
def test_replay_in_a_fresh_process_rebuilds_identical_state_postgres(
    commands: list[tuple[object, ...]], worker: subprocess.Popen[str]
) -> None:
    """Same law on PostgreSQL."""
    require_postgres()
    schema = f"t_{uuid4().hex[:16]}"
    try:
        check_replay(f"{POSTGRES_URL}?schema={schema}", commands, worker)
    finally:
        drop_schema(schema)
