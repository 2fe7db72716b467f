"""Analytics read from ``analytics_sessions``/``analytics_visitors`` as SQL aggregates.

Three queries, whatever the number of sessions: the counts grouped by start hour, channel and
end reason; each session's duration and message count (the distributions: ``durations_s`` and
the medians); and the visitors (new, returning, linked). The database does the per-session work
on the read model's columns (the period on the ``(tenant, started_at)`` index); Python only
folds a few thousand groups. Before, every row was fetched and its five timestamps parsed:
2.1 s at 100,000 sessions (docs/benchmarks.md).

The definitions (docs/projections.md) are the ones the per-row code had:

- end reason: ``abandoned`` (closed with a task still open), ``timed_out``, ``ended`` or
  ``active``; a session idle past its
  deadline at ``as_of`` reads as timed out before its timed-out event is recorded
  (``is_past_deadline``: idle time that *exceeds* the timeout);
- duration: first to last message (0 with one message or none), exact to the microsecond;
- engaged: any one rule of :class:`~chatledger.projections.query_results.Engagement`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Table,
    and_,
    case,
    cast,
    exists,
    extract,
    func,
    literal,
    literal_column,
    or_,
    select,
)

from ..domain.tenancy import DEFAULT_TENANT
from .analytics import check_range, sessions_table, visitors_table
from .prefixes import on
from .query_results import Analytics, Engagement

END_REASONS = ("timed_out", "ended", "abandoned", "active")
"""The end reasons every analytics answer lists (0 if none)."""
_MICROS = timedelta(microseconds=1)


def _micros(column: Any, dialect: str) -> ColumnElement[Any]:
    """A SQLite timestamp (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC text) as integer microseconds."""
    assert dialect == "sqlite"
    seconds = cast(func.strftime("%s", func.substr(column, 1, 19)), BigInteger)
    return seconds * 1_000_000 + cast(func.substr(column, 21, 6), BigInteger)


def duration_us(dialect: str, table: Table = sessions_table) -> ColumnElement[Any]:
    """First to last message in integer microseconds (0 if the session has no message)."""
    s = table.c
    if dialect == "sqlite":
        span = _micros(s.last_message_at, dialect) - _micros(s.first_message_at, dialect)
    else:  # PostgreSQL: an interval's epoch is an exact numeric
        span = cast(func.round(extract("epoch", s.last_message_at - s.first_message_at) * 1_000_000), BigInteger)
    return case((s.first_message_at.is_(None), literal(0, BigInteger)), else_=span)


def start_hour(dialect: str, table: Table = sessions_table) -> ColumnElement[Any]:
    """``YYYY-MM-DD HH`` of the start (UTC)."""
    started = table.c.started_at
    if dialect == "sqlite":
        return func.substr(started, 1, 13)
    return func.to_char(func.timezone("UTC", started), "YYYY-MM-DD HH24")


def end_reason(as_of: datetime, table: Table = sessions_table) -> ColumnElement[Any]:
    s = table.c
    past = and_(s.status == "active", s.expires_at.is_not(None), s.expires_at < as_of)
    return case(
        (and_(s.status == "active", ~past), literal("active")),
        (s.open_tasks > 0, literal("abandoned")),
        (past, literal("timed_out")),
        else_=s.status,
    )


def engaged(rule: Engagement, duration: ColumnElement[Any], table: Table = sessions_table) -> ColumnElement[Any]:
    s = table.c
    rules: list[ColumnElement[bool]] = []
    if rule.min_duration is not None:
        rules.append(duration >= rule.min_duration // _MICROS)
    if rule.min_user_messages is not None:
        rules.append(s.user_messages >= rule.min_user_messages)
    if rule.completed_task:
        rules.append(s.completed_tasks > 0)
    return case((or_(*rules), 1), else_=0) if rules else literal(0)


def compute_analytics(
    conn: Connection,
    *,
    start: datetime | None,
    end: datetime | None,
    as_of: datetime,
    engagement: Engagement,
    position: int,
    head: int,
    tenant: str | None = DEFAULT_TENANT,
) -> Analytics:
    """Aggregate the session facts of ``tenant``'s sessions (None: every tenant's;
    a visitor is one per tenant) that started in ``[start, end)``."""
    check_range(start, end)
    table = on(conn, sessions_table)  # under the ledger's table prefix
    s, v = table.c, on(conn, visitors_table).c
    dialect = conn.dialect.name
    where: list[ColumnElement[bool]] = []
    if tenant is not None:
        where.append(s.tenant == tenant)
    if start is not None:
        where.append(s.started_at >= start)
    if end is not None:
        where.append(s.started_at < end)
    duration = duration_us(dialect, table)
    hour, reason = start_hour(dialect, table).label("hour"), end_reason(as_of, table).label("reason")
    groups = conn.execute(
        select(
            hour, s.channel, reason, func.count(), func.sum(cast(s.is_returning, Integer)),
            func.sum(s.user_messages), func.sum(engaged(engagement, duration, table)),
            func.sum(case((s.user_id.is_not(None), 1), else_=0)),
        ).where(*where).group_by(*(literal_column(str(i)) for i in (1, 2, 3)))  # the labels' order
    ).all()
    per_day: Counter[date] = Counter()
    per_hour: Counter[int] = Counter()
    per_channel: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    sessions = returning_sessions = user_messages = engaged_sessions = authenticated = 0
    for at_hour, channel, why, n, returning, users, engaged_n, authed in groups:
        per_day[date.fromisoformat(at_hour[:10])] += n
        per_hour[int(at_hour[11:13])] += n
        per_channel[channel] += n
        reasons[why] += n
        sessions += n
        returning_sessions += int(returning or 0)
        user_messages += int(users or 0)
        engaged_sessions += int(engaged_n or 0)
        authenticated += int(authed or 0)
    # The distributions, in start order (as ``durations_s`` always was).
    facts = conn.execute(
        select(duration, s.messages).where(*where).order_by(s.started_at, s.session_id)
    ).all()
    durations = [us / 1_000_000 for us, _ in facts]
    counts = [n for _, n in facts]
    linked = exists().where(v.tenant == s.tenant, v.visitor_id == s.visitor_id, v.user_id.is_not(None))
    per_visitor = (
        select(
            func.min(cast(s.is_returning, Integer)).label("lo"),
            func.max(cast(s.is_returning, Integer)).label("hi"),
            func.max(case((linked, 1), else_=0)).label("linked"),
        ).where(*where).group_by(s.tenant, s.visitor_id).subquery()
    )
    p = per_visitor.c
    visitors, new, returning_visitors, linked_visitors = conn.execute(
        select(
            func.count(), func.sum(case((p.lo == 0, 1), else_=0)),
            func.sum(case((p.hi == 1, 1), else_=0)), func.sum(p.linked),
        )
    ).one()
    messages = sum(counts)
    return Analytics(
        position=position,
        head=head,
        start=start,
        end=end,
        as_of=as_of,
        engagement=engagement,
        sessions=sessions,
        sessions_per_day=dict(sorted(per_day.items())),
        sessions_per_hour=dict(sorted(per_hour.items())),
        sessions_per_channel=dict(sorted(per_channel.items())),
        visitors=visitors,
        new_visitors=int(new or 0),
        returning_visitors=int(returning_visitors or 0),
        returning_sessions=returning_sessions,
        messages=messages,
        user_messages=user_messages,
        messages_per_session=statistics.fmean(counts) if counts else 0.0,
        median_messages_per_session=float(statistics.median(counts)) if counts else 0.0,
        durations_s=tuple(durations),
        mean_duration_s=statistics.fmean(durations) if durations else 0.0,
        median_duration_s=float(statistics.median(durations)) if durations else 0.0,
        end_reasons={k: reasons[k] for k in END_REASONS},
        engaged_sessions=engaged_sessions,
        linked_visitors=int(linked_visitors or 0),
        authenticated_sessions=authenticated,
    )


__all__ = ["END_REASONS", "compute_analytics", "duration_us", "end_reason", "start_hour"]
