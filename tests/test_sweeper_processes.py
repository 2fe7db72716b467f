"""Three sweeper processes, one PostgreSQL database, 10,000 due sessions:
exactly 10,000 timed-out events, one per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import psycopg
import pytest
from chatledger import ChatLedger
from chatledger.domain.policy import AppliedPolicy
from chatledger.domain.session import Session
from psycopg import sql

from .conftest import POSTGRES_CONNINFO

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

SWEEPER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import datetime
    from chatledger import ChatLedger
    from chatledger.application.sweeper import sweep

    url, now, start_file = sys.argv[1], datetime.fromisoformat(sys.argv[2]), sys.argv[3]
    with ChatLedger.open(url) as ledger:
        ledger.projector  # connect before the start line
        while not __import__("os").path.exists(start_file):
            time.sleep(0.01)
        total = conflicts = dropped = 0
        for _ in range(3):  # a worker's next runs find nothing left to do
            report = sweep(ledger, now, batch_size=200)
            total += report.timed_out
            conflicts += report.conflicts
            dropped += report.dropped
        print(json.dumps({"timed_out": total, "conflicts": conflicts, "dropped": dropped}))
    """
)


@pytest.mark.postgres
@pytest.mark.slow
def test_three_sweeper_processes_time_out_10000_sessions_exactly_once(
    postgres_url: str, tmp_path: object
) -> None:
    n = 10_000
    with ChatLedger.open(postgres_url) as ledger:
        policy = AppliedPolicy.of(ledger.policy)
        ledger.projector  # noqa: B018 - create the read-model tables once, before the race
        for start in range(0, n, 1000):
            sessions = []
            for i in range(start, start + 1000):
                # Deadlines spread over an hour, so the sweepers meet everywhere.
                at = T0 + timedelta(seconds=i % 3600)
                session = Session.start(
                    session_id=uuid4(), visitor_id=f"p-{i}", at=at, policy=policy
                )
                session.receive("hello", at=at)
                sessions.append(session)
            ledger.save(*sessions)
        # The index is NOT caught up here: the three sweepers catch it up concurrently.

    # The schema exists now; eventsourcing's CREATE TABLE IF NOT EXISTS is not
    # safe to race on PostgreSQL (deadlocks), so the workers skip it, as
    # servers started after a deploy's migration step would.
    env = {**os.environ, "CREATE_TABLE": "n"}
    start_file = f"{tmp_path}/go"
    now = (T0 + timedelta(hours=2)).isoformat()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", SWEEPER, postgres_url, now, start_file],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    open(start_file, "w").close()
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))

    schema = postgres_url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_CONNINFO) as conn:
        counts = conn.execute(
            sql.SQL(
                "SELECT count(*), count(DISTINCT originator_id) FROM {}.chatledger_events "
                "WHERE topic LIKE %s"
            ).format(sql.Identifier(schema)),
            ("%Session.TimedOut",),
        ).fetchone()
        left = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.chatledger_active_sessions").format(
                sql.Identifier(schema)
            )
        ).fetchone()
    assert counts == (n, n)
    assert sum(r["timed_out"] for r in reports) == n
    assert left == (0,)
    # Work was shared, not done by one process while the others waited.
    assert sum(1 for r in reports if r["timed_out"] > 0) >= 2, reports
