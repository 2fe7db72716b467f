"""Log retention (issue 17): archived sessions' events removed from the live log
under a sealed record, while analytics, verify and the archive agree.

Every test runs on a real SQLite file and on PostgreSQL (``database_url``)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from chatledger import ChatLedger, ManualClock
from chatledger.application.log_retention import check_archives, remove_archived_sessions
from chatledger.domain.errors import InvalidCommandError, UnknownSessionError
from chatledger.projections import ActiveSessions, SessionAnalytics

from .helpers import log_head


def _story(ledger: ChatLedger, clock: ManualClock, n: int = 3) -> list[UUID]:
    """``n`` sessions that time out, and one that stays live."""
    old = []
    for i in range(n):
        turn = ledger.receive(visitor_id=f"v-{i}", text=f"hello {i}")
        ledger.reply(turn.session_id, "hi there")
        ledger.set_slot(turn.session_id, "order", f"A-{i}")
        old.append(turn.session_id)
    ledger.start_task(old[0], "refund")
    ledger.link_identity(visitor_id="v-1", user_id="u-1")
    clock.advance(hours=2)
    ledger.sweep()
    ledger.receive(visitor_id="v-live", text="still here")
    return old


def _figures(ledger: ChatLedger, as_of: Any) -> dict[str, Any]:
    figures = ledger.analytics(as_of=as_of).model_dump()
    for key in ("position", "head"):
        figures.pop(key)
    return figures


def _sql(ledger: ChatLedger, database_url: str, statement: str, *params: Any) -> None:
    """Hand-written SQL, as an attacker with write access would run it."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(statement.replace("%s", "?"), params)
    else:
        schema = ledger.recorder.datastore.schema  # type: ignore[attr-defined]
        with ledger.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            conn.execute(f"SET search_path TO {schema}")
            conn.execute(statement, params)
            conn.commit()


def _oid(database_url: str, sid: UUID) -> Any:
    return sid.hex if database_url.startswith("sqlite") else sid


def _archive_and_remove(ledger: ChatLedger, clock: ManualClock, tmp_path: Path) -> Any:
    clock.advance(days=2)
    assert ledger.archive_closed_sessions(timedelta(days=1), tmp_path).archived == 3
    return remove_archived_sessions(ledger, timedelta(days=1), tmp_path)


def test_removal_keeps_analytics_verify_and_archive_in_agreement(
    database_url: str, clock: ManualClock, tmp_path: Path
) -> None:
    ledger = ChatLedger.open(database_url, clock=clock)
    try:
        old = _story(ledger, clock)
        ledger.catch_up()
        as_of = clock()
        before = _figures(ledger, as_of)
        result = _archive_and_remove(ledger, clock, tmp_path)
        assert result.removed_sessions == 3 and len(result.paths) == 1
        # The events are gone from the live log; the live session is untouched.
        for sid in old:
            assert list(ledger.recorder.select_events(sid)) == []
            with pytest.raises(UnknownSessionError):
                ledger.session(sid)
        # verify: the removed part is accounted for, not tampering.
        report = ledger.verify()
        assert report.ok, report.breaks
        assert report.removed == result.removed_events
        assert report.removed_by_archive == {result.paths[0].name: result.removed_events}
        # The archive holds exactly what the log hashed.
        check = check_archives(ledger, tmp_path)
        assert (check.sessions, check.agreed, check.problems) == (3, 3, [])
        # Analytics over the period before: the same live, and after a rebuild from the log.
        assert _figures(ledger, as_of) == before
        ledger.projector.rebuild("analytics")
        assert _figures(ledger, as_of) == before
        # Anchors taken before the removal still verify.
    finally:
        ledger.close()
