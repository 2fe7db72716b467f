"""Reads of the read models on behalf of the public API (``ChatLedger`` delegates here).

Each read reports how far behind the log it is: the head of the log is read
first, then the projection's position, then the data, so ``lag`` never
understates how much is missing.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Connection, select

from ..domain.errors import (
    ConfigurationError,
    InvalidCommandError,
    SessionOwnershipError,
    UnknownSessionError,
)
from ..domain.pydantic_aggregates import utc
from ..domain.tenancy import DEFAULT_TENANT, scoped_key
from . import analytics as an
from . import analytics_queries as aq
from . import conversation_log as log
from . import gaps
from . import memory_tables as mem
from .query_results import (
    Analytics,
    CurvePoint,
    Engagement,
    Memory,
    Resessionized,
    TimeoutCurve,
    Transcript,
    TranscriptMessage,
)
from .runner import ProjectionRunner
from .prefixes import on
from .tracking import tracking_table

T = TypeVar("T")
MAX_CURVE_POINTS = 50  # timeouts per timeout_curve() call: one SUM each in one query


class ProjectionReads:
    """Query the read models of one projector for one tenant (every row of
    another tenant is as if it did not exist); every answer carries its lag."""

    def __init__(
        self, projector: ProjectionRunner, clock: Callable[[], datetime], tenant: str = DEFAULT_TENANT
    ) -> None:
        self.projector = projector
        self.clock = clock
        self.tenant = tenant

    def _read(self, name: str, query: Callable[[Connection, int, int], T]) -> T:
        if name not in self.projector.projections:
            raise ConfigurationError(
                f"The {name!r} projection is not enabled in this ledger; add it to "
                "read_models (chatledger.projections.DEFAULT_READ_MODELS has it)."
            )
        head = self.projector.head()
        with self.projector.engine.connect() as conn:
            tracking = on(conn, tracking_table)
            position = conn.execute(
                select(tracking.c.notification_id).where(
                    tracking.c.projection == name,
                    tracking.c.application == self.projector.application_name,
                )
            ).scalar() or 0
            return query(conn, position, head)

    # ---- transcripts ------------------------------------------------------

    def transcript(
        self,
        session_id: UUID | str | None = None,
        *,
        user_id: str | None = None,
        visitor_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Transcript:
        if session_id is None and user_id is None and visitor_id is None and start is None and end is None:
            raise InvalidCommandError(
                "Say whose transcript to read: pass a session_id, user_id, visitor_id "
                "or a time range (start/end)."
            )
        an.check_range(start, end)
        sid = _session_key(session_id) if session_id is not None else None

        def query(conn: Connection, position: int, head: int) -> Transcript:
            if sid is not None and (user_id is not None or visitor_id is not None):
                owner = log.session_owner(conn, sid, self.tenant)
                if owner is not None and not (
                    (user_id is not None and owner[1] == user_id)
                    or (user_id is None and visitor_id == owner[0] and owner[1] is None)
                ):
                    raise SessionOwnershipError(UUID(sid), visitor_id=visitor_id, user_id=user_id)
            messages = log.query_transcript(
                conn, session_id=sid, user_id=user_id, visitor_id=visitor_id, start=start, end=end,
                tenant=self.tenant,
            )
            return Transcript(position=position, head=head, messages=tuple(messages))

        return self._read("conversation_log", query)

    def messages(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[int, int, Iterator[TranscriptMessage]]:
        """Stream every message (for exports): ``(position, head, messages)``.

        The caller must exhaust the iterator; it holds a connection until then.
        """
        an.check_range(start, end)
        head = self.projector.head()
        position = self.projector.position("conversation_log")

        def stream() -> Iterator[TranscriptMessage]:
            with self.projector.engine.connect() as conn:
                yield from log.iter_messages(conn, start=start, end=end, tenant=self.tenant)

        return position, head, stream()

    # ---- analytics --------------------------------------------------------

    def analytics(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        as_of: datetime | None = None,
        engagement: Engagement | None = None,
    ) -> Analytics:
        moment = utc(as_of) if as_of is not None else utc(self.clock())
        return self._read(
            "analytics",
            lambda conn, position, head: aq.compute_analytics(
                conn,
                start=start,
                end=end,
                as_of=moment,
                engagement=engagement or Engagement(),
                position=position,
                head=head,
                tenant=self.tenant,
            ),
        )

    def analytics_by_tenant(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        as_of: datetime | None = None,
        engagement: Engagement | None = None,
    ) -> dict[str, Analytics]:
        """:meth:`analytics` of every tenant of the store, by tenant (an operator's
        comparison: it reads every tenant's facts, whatever this reader's tenant)."""
        moment = utc(as_of) if as_of is not None else utc(self.clock())
        rule = engagement or Engagement()

        def query(conn: Connection, position: int, head: int) -> dict[str, Analytics]:
            return {
                tenant: aq.compute_analytics(
                    conn, start=start, end=end, as_of=moment, engagement=rule,
                    position=position, head=head, tenant=tenant,
                )
                for tenant in an.tenants(conn)
            }

        return self._read("analytics", query)

    def resessionize(
        self,
        timeout: timedelta,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Resessionized:
        if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
            raise InvalidCommandError(
                f"A re-sessionizing timeout must be a positive timedelta, got {timeout!r}."
            )
        an.check_range(start, end)

        def query(conn: Connection, position: int, head: int) -> Resessionized:
            conversations = an.resessionize(log.message_times(conn, start, end, self.tenant), timeout)
            per_day: Counter[date] = Counter(c[1].date() for c in conversations)
            counts = [c[3] for c in conversations]
            durations = [(c[2] - c[1]).total_seconds() for c in conversations]
            return Resessionized(
                position=position,
                head=head,
                timeout=timeout,
                start=start,
                end=end,
                sessions=len(conversations),
                sessions_per_day=dict(sorted(per_day.items())),
                visitors=len({c[0] for c in conversations}),
                messages=sum(counts),
                messages_per_session=statistics.fmean(counts) if counts else 0.0,
                mean_duration_s=statistics.fmean(durations) if durations else 0.0,
            )

        return self._read("conversation_log", query)

    def timeout_curve(
        self,
        timeouts: Sequence[timedelta],
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> TimeoutCurve:
        """:meth:`resessionize`'s conversation counts under each of ``timeouts``, in one query."""
        listed = list(timeouts) if not isinstance(timeouts, (str, bytes)) else []
        if not 1 <= len(listed) <= MAX_CURVE_POINTS or not all(
            isinstance(t, timedelta) and t > timedelta(0) for t in listed
        ):
            raise InvalidCommandError(
                f"timeouts must be 1 to {MAX_CURVE_POINTS} positive timedeltas, got {timeouts!r}."
            )
        an.check_range(start, end)

        def query(conn: Connection, position: int, head: int) -> TimeoutCurve:
            messages, counts = gaps.timeout_curve(conn, listed, start, end, self.tenant)
            return TimeoutCurve(
                position=position, head=head, start=start, end=end, messages=messages,
                points=tuple(CurvePoint(timeout=t, sessions=n) for t, n in zip(listed, counts)),
            )

        return self._read("message_gaps", query)

    # ---- memory -----------------------------------------------------------

    def memory(self, *, user_id: str | None = None, visitor_id: str | None = None) -> Memory:
        if (user_id is None) == (visitor_id is None):
            raise InvalidCommandError(
                "Pass exactly one of user_id (an authenticated person) or visitor_id "
                "(an anonymous visitor) to memory()."
            )
        for label, value in (("user_id", user_id), ("visitor_id", visitor_id)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidCommandError(f"{label} must be a non-empty string.")

        def query(conn: Connection, position: int, head: int) -> Memory:
            base: dict[str, Any] = {
                "position": position,
                "head": head,
                "user_id": user_id,
                "visitor_id": visitor_id,
            }
            # The memory's keys are the visitor's and user's within the tenant.
            visitor = scoped_key(self.tenant, visitor_id) if visitor_id is not None else None
            if visitor is not None and mem.visitor_link(conn, visitor, self.tenant) is not None:
                # Linked: the memory now belongs to the user; never read it anonymously.
                return Memory(**base, known=False, linked_to_user=True)
            subject = (
                mem.user_subject(scoped_key(self.tenant, user_id))
                if user_id
                else mem.visitor_subject(visitor or "")
            )
            profile = mem.read_profile(conn, subject, self.tenant)
            if profile is None:
                return Memory(**base, known=False)
            preferences = {k: v[0] for k, v in sorted(profile["preferences"].items())}
            return Memory(
                **base,
                known=True,
                display_name=mem.display_name(preferences),
                preferences=preferences,
                session_count=profile["session_count"],
                first_seen_at=profile["first_seen_at"],
                last_seen_at=profile["last_seen_at"],
                last_session_id=UUID(profile["last_session_id"]),
                left_off_session_id=_uuid_or_none(profile["left_off_session_id"]),
                left_off_at=profile["left_off_at"],
                left_off_status=profile["left_off_status"],
                last_slots=profile["last_slots"],
                unfinished_tasks=tuple(profile["unfinished_tasks"]),
            )

        return self._read("memory", query)


def _session_key(session_id: UUID | str) -> str:
    try:
        return str(session_id if isinstance(session_id, UUID) else UUID(str(session_id)))
    except ValueError as err:
        raise UnknownSessionError(session_id) from err


def _uuid_or_none(value: str | None) -> UUID | None:
    return UUID(value) if value is not None else None
