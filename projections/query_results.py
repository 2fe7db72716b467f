"""What reads through the public API return: data plus how far behind the log it is.

Every result carries ``position`` (the last event of the log the read model has
applied), ``head`` (the last event in the log when the read ran) and ``lag``
(events recorded but not yet applied). ``lag == 0`` means the answer reflects
every event recorded before the read.
"""

from __future__ import annotations

from datetime import date, timedelta
from uuid import UUID

from pydantic import AwareDatetime, Field, JsonValue, computed_field

from ..domain.pydantic_aggregates import Immutable


class ProjectionRead(Immutable):
    position: int
    head: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def lag(self) -> int:
        """Events in the log that this answer does not reflect yet."""
        return max(self.head - self.position, 0)

    @property
    def is_current(self) -> bool:
        return self.lag == 0


class TranscriptMessage(Immutable):
    session_id: UUID
    position: int
    visitor_id: str
    user_id: str | None
    channel: str
    role: str
    text: str
    at: AwareDatetime


class Transcript(ProjectionRead):
    """Messages in conversation order (by time, then by log order)."""

    messages: tuple[TranscriptMessage, ...]

    @property
    def session_ids(self) -> tuple[UUID, ...]:
        return tuple(dict.fromkeys(m.session_id for m in self.messages))


class Engagement(Immutable):
    """When a session counts as *engaged* (any one rule suffices), like web
    analytics' engaged sessions: at least ``min_duration`` of real exchange
    (first to last message), or at least ``min_user_messages`` user messages,
    or a completed task (if ``completed_task``)."""

    min_duration: timedelta | None = timedelta(seconds=10)
    min_user_messages: int | None = 2
    completed_task: bool = True


class Analytics(ProjectionRead):
    """Session analytics over sessions that *started* in ``[start, end)``.

    See ``docs/projections.md`` for every definition.
    """

    start: AwareDatetime | None
    end: AwareDatetime | None
    as_of: AwareDatetime
    engagement: Engagement
    sessions: int
    sessions_per_day: dict[date, int]
    sessions_per_hour: dict[int, int]
    sessions_per_channel: dict[str, int]
    visitors: int
    new_visitors: int
    returning_visitors: int
    returning_sessions: int
    messages: int
    user_messages: int
    messages_per_session: float
    median_messages_per_session: float
    durations_s: tuple[float, ...]
    mean_duration_s: float
    median_duration_s: float
    end_reasons: dict[str, int]
    engaged_sessions: int
    linked_visitors: int
    authenticated_sessions: int

    @property
    def returning_visitor_share(self) -> float:
        return self.returning_visitors / self.visitors if self.visitors else 0.0

    @property
    def engagement_rate(self) -> float:
        return self.engaged_sessions / self.sessions if self.sessions else 0.0

    @property
    def identity_link_rate(self) -> float:
        """Share of the period's visitors that are linked to a user."""
        return self.linked_visitors / self.visitors if self.visitors else 0.0


class Resessionized(ProjectionRead):
    """Conversation counts as they would have been under another idle timeout,
    recomputed from the recorded messages (the log is not touched)."""

    timeout: timedelta
    start: AwareDatetime | None
    end: AwareDatetime | None
    sessions: int
    sessions_per_day: dict[date, int]
    visitors: int
    messages: int
    messages_per_session: float
    mean_duration_s: float


class CurvePoint(Immutable):
    timeout: timedelta
    sessions: int


class TimeoutCurve(ProjectionRead):
    """Conversation counts of the messages in ``[start, end)`` under each timeout: each point's
    ``sessions`` equals ``resessionize(timeout, start=start, end=end).sessions``, read from the
    gaps read model in one query."""

    start: AwareDatetime | None
    end: AwareDatetime | None
    messages: int
    points: tuple[CurvePoint, ...]


class Memory(ProjectionRead):
    """What the bot remembers about one user (or one still-anonymous visitor).

    ``display_name`` and ``preferences`` come from user-scoped slots;
    ``last_session_id``/``last_seen_at`` name the most recently active session;
    ``left_off_*``, ``last_slots`` and ``unfinished_tasks`` describe where the
    most recent *closed* conversation left off. ``known`` is False when there is nothing to tell.
    """

    user_id: str | None
    visitor_id: str | None
    known: bool
    display_name: str | None = None
    preferences: dict[str, JsonValue] = Field(default_factory=dict)
    session_count: int = 0
    first_seen_at: AwareDatetime | None = None
    last_seen_at: AwareDatetime | None = None
    last_session_id: UUID | None = None
    left_off_session_id: UUID | None = None
    left_off_at: AwareDatetime | None = None
    left_off_status: str | None = None
    last_slots: dict[str, JsonValue] = Field(default_factory=dict)
    unfinished_tasks: tuple[str, ...] = ()
    linked_to_user: bool = False
