"""The console's reads at scale (issue 15): analytics as SQL aggregates and the timeout curve
from the gaps read model, each checked against an independent computation on random histories.

- ``timeout_curve(Ts, start, end)`` equals ``resessionize(T, start, end).sessions`` for every
  ``T``: messages stamped earlier than a visitor's last one, tenants, retention's archive
  (rows leave both read models) and catch-up in batches of any size included;
- ``analytics()`` equals the same figures computed here from ``session()``/``visitor()``, the
  aggregates' definitions written out once more.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chatledger import ChatLedger, ChatLedgerError, ManualClock, SessionPolicy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import examples
from .test_projections import fresh_ledger

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
VISITORS = ["v0", "v1", "v2"]
POLICY = SessionPolicy(idle_timeout=timedelta(minutes=30))

steps = st.lists(
    st.one_of(
        # a user message `minutes` after the previous step (negative: stamped earlier)
        st.tuples(st.just("receive"), st.sampled_from(VISITORS), st.integers(-20, 90), st.booleans()),
        st.tuples(st.just("reply"), st.sampled_from(VISITORS), st.integers(0, 40)),
        st.tuples(st.just("end"), st.sampled_from(VISITORS), st.booleans()),
        # end the visitor's session, then a message stamped before its last one (a new session)
        st.tuples(st.just("back"), st.sampled_from(VISITORS), st.integers(1, 120)),
        st.tuples(st.just("task"), st.sampled_from(VISITORS), st.booleans()),
        st.tuples(st.just("link"), st.sampled_from(VISITORS)),
        st.tuples(st.just("catch_up"), st.integers(1, 7)),
        st.tuples(st.just("archive"), st.integers(1, 200)),
    ),
    min_size=1,
    max_size=30,
)


def play(ledger: ChatLedger, acme: ChatLedger, clock: ManualClock, history: list[Any], archives: Any) -> None:
    for step in history:
        kind = step[0]
        if kind == "catch_up":
            ledger.projector.catch_up(batch_size=step[1])
            continue
        if kind == "archive":
            ledger.archive_closed_sessions(timedelta(minutes=step[1]), archives, now=clock())
            continue
        visitor = step[1]
        clock.advance(seconds=30)
        try:
            if kind == "receive":
                at = clock() + timedelta(minutes=step[2])
                if step[2] > 0:
                    clock.set(at)
                (acme if step[3] else ledger).receive(visitor, "hi", at=at)
                continue
            if kind == "back":
                state = ledger.visitor(visitor)
                if state and state.current_session_id:
                    ledger.end_session(state.current_session_id, at=clock())
                ledger.receive(visitor, "again", at=clock() - timedelta(minutes=step[2]))
                continue
            if kind == "link":
                ledger.link_identity(visitor, f"user-{visitor}", at=clock())
                continue
            state = ledger.visitor(visitor)
            sid = state.current_session_id if state else None
            if sid is None:
                continue
            if kind == "reply":
                ledger.reply(sid, "hello", at=clock() + timedelta(seconds=step[2]))
            elif kind == "end":
                ledger.end_session(sid, at=clock(), reason="handoff" if step[2] else "ended")
            elif kind == "task":
                (ledger.complete_task if step[2] else ledger.start_task)(sid, "order", at=clock())
        except ChatLedgerError:
            pass  # a rejected command appends nothing


TIMEOUTS = [timedelta(minutes=m) for m in (1, 5, 15, 30, 45, 90)] + [timedelta(seconds=30)]


@pytest.mark.slow  # random histories on both databases; the fast loop has live == rebuilt
@settings(max_examples=examples(40), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=steps, cut=st.tuples(st.integers(-10, 400), st.integers(1, 400)))
def test_the_timeout_curve_equals_resessionizing_under_each_timeout(
    database_url: str, tmp_path: Any, history: list[Any], cut: tuple[int, int]
) -> None:
    clock = ManualClock(T0)
    with fresh_ledger(database_url, tmp_path, clock, POLICY) as ledger:
        acme = ledger.tenant("acme")
        play(ledger, acme, clock, history, tmp_path / "archives")
        ledger.catch_up()
        start = T0 + timedelta(minutes=cut[0])
        for handle in (ledger, acme):
            for period in ({}, {"start": start}, {"start": start, "end": start + timedelta(minutes=cut[1])}):
                curve = handle.timeout_curve(TIMEOUTS, **period)
                assert curve.lag == 0
                expected = [handle.resessionize(t, **period) for t in TIMEOUTS]
                assert [p.sessions for p in curve.points] == [r.sessions for r in expected]
                assert [p.timeout for p in curve.points] == TIMEOUTS
                assert curve.messages == expected[0].messages


def expected_analytics(ledger: ChatLedger, as_of: datetime) -> dict[str, Any]:
    """The analytics figures from the sessions themselves (the public API)."""
    states = []
    for visitor in VISITORS:
        found = ledger.visitor(visitor)
        for sid in found.session_ids if found else ():
            states.append(ledger.session(sid, as_of=as_of))
    states = [s for s in states if s.started_at <= as_of]
    states.sort(key=lambda s: (s.started_at, str(s.session_id)))
    durations = [
        (s.messages[-1].at - s.messages[0].at).total_seconds() if s.messages else 0.0 for s in states
    ]
    reasons: Counter[str] = Counter()
    for s in states:
        status = s.status if s.status in ("active", "timed_out") else "ended"
        reasons["abandoned" if status != "active" and s.open_tasks else status] += 1
    users = [sum(1 for m in s.messages if m.role == "user") for s in states]
    visitors = {s.visitor_id for s in states}
    linked = {v for v in visitors if (ledger.visitor(v) or object()).user_id is not None}  # type: ignore[attr-defined]
    return {
        "sessions": len(states),
        "sessions_per_day": dict(sorted(Counter(s.started_at.date() for s in states).items())),
        "sessions_per_hour": dict(sorted(Counter(s.started_at.hour for s in states).items())),
        "visitors": len(visitors),
        "new_visitors": len({s.visitor_id for s in states if not s.is_returning}),
        "returning_visitors": len({s.visitor_id for s in states if s.is_returning}),
        "returning_sessions": sum(s.is_returning for s in states),
        "messages": sum(len(s.messages) for s in states),
        "user_messages": sum(users),
        "durations_s": tuple(durations),
        "mean_duration_s": statistics.fmean(durations) if durations else 0.0,
        "median_duration_s": float(statistics.median(durations)) if durations else 0.0,
        "median_messages_per_session": float(statistics.median([len(s.messages) for s in states])) if states else 0.0,
        "end_reasons": {k: reasons[k] for k in ("timed_out", "ended", "abandoned", "active")},
        "engaged_sessions": sum(
            1 for s, d, u in zip(states, durations, users) if d >= 10 or u >= 2 or s.completed_tasks
        ),
        "linked_visitors": len(linked),
        "authenticated_sessions": sum(1 for s in states if s.user_id is not None),
    }


@pytest.mark.slow
@settings(max_examples=examples(30), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=steps.filter(lambda h: not any(s[0] == "archive" for s in h)), late=st.integers(0, 240))
def test_analytics_equal_the_figures_of_the_sessions_themselves(
    database_url: str, tmp_path: Any, history: list[Any], late: int
) -> None:
    clock = ManualClock(T0)
    with fresh_ledger(database_url, tmp_path, clock, POLICY) as ledger:
        play(ledger, ledger.tenant("acme"), clock, history, tmp_path / "archives")
        ledger.catch_up()
        as_of = clock() + timedelta(minutes=late)  # sessions idle past their deadline read as timed out
        got = ledger.analytics(as_of=as_of)
        assert {k: getattr(got, k) for k in expected_analytics(ledger, as_of)} == expected_analytics(ledger, as_of)


def test_the_timeout_curve_checks_its_arguments(ledger: ChatLedger) -> None:
    for bad in ([], [timedelta(0)], [timedelta(minutes=-1)], ["PT5M"], [timedelta(minutes=1)] * 51):
        with pytest.raises(ChatLedgerError):
            ledger.timeout_curve(bad)  # type: ignore[arg-type]
