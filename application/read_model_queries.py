"""The queries of :class:`~chatledger.ChatLedger` answered by its read models and the log feed.

:class:`ReadModelQueries` is the read-model half of the facade (the ledger's commands and its
queries of the event log are in :mod:`.ledger`): bring the read models up to date, read their
status and failures, the transcripts, analytics and memory they hold, and the ordered event feed
for subscribers (``ledger.webhook()`` delivers it). Each method checks its arguments and delegates.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from ..projections.failures import ProjectionFailure
from ..projections.query_results import Analytics, Engagement, Memory, Resessionized, Transcript
from ..projections.status import Progress, ProjectionStatus
from .access import caller_user
from .arguments import (
    DURATION,
    ID,
    SID,
    TIME,
    callback_arg,
    checked,
    engagement_arg,
    feed_limit_arg,
    flag_arg,
    interval_arg,
    opt,
    position_arg,
)
from .read_your_writes import wait_for
from .subscribers import LogEvent, read_events
from .unit_of_work import UnitOfWork


class ReadModelQueries(UnitOfWork):
    """The read-model queries of the ledger (see the module docstring)."""

    @checked(progress=callback_arg)
    def catch_up(self, *, progress: Progress | None = None) -> int:
        """Bring every read model up to the head of the log; return events applied.

        For a background runner use ``ledger.projector.start(interval)`` (and
        ``stop()``), or leave it to ``chatledger projections run``.
        """
        return self.projector.catch_up(progress=progress)

    @checked(position=position_arg, limit=feed_limit_arg, content=flag_arg)
    def events_after(self, position: int = 0, *, limit: int = 1000, content: bool = False) -> list[LogEvent]:
        """The events recorded after ``position`` (0: from the start), in log
        order, at most ``limit``; resume with the last one's ``position``. No
        event is ever skipped, also while writers append. Personal fields are
        sealed unless ``content`` is True (then decrypted; erased content reads
        as erased). See docs/projections.md, "Subscribers"."""
        return read_events(self, position, limit, content=content)

    def projection_status(self) -> list[ProjectionStatus]:
        """Each read model's position, the head of the log, the lag, and how
        many events it could not apply (``failed``)."""
        return self.projector.status()

    @checked(name=opt(ID))
    def projection_failures(self, name: str | None = None) -> list[ProjectionFailure]:
        """The events read models could not apply (recorded and skipped by
        that read model only), of read model ``name`` or of all, in log order.
        A rebuild of the read model applies them again."""
        return self.projector.failures(name)

    @checked(position=position_arg, timeout=opt(interval_arg))
    def wait_for(self, position: int, *, timeout: float | None = None) -> int:
        """Block until every read model has applied log ``position`` (a command's
        ``turn.position``, ``written_position()`` or ``log_position()``), catching
        them up; :class:`ReadTimeoutError` after ``timeout`` (default
        ``read_wait_timeout_s``). Returns the position reached."""
        return wait_for(self, position, timeout)

    @checked(session_id=opt(SID), user_id=opt(ID), visitor_id=opt(ID), start=opt(TIME), end=opt(TIME),
             after=opt(position_arg))
    def transcript(
        self, session_id: UUID | str | None = None, *, user_id: str | None = None,
        visitor_id: str | None = None, start: datetime | None = None, end: datetime | None = None,
        after: int | None = None,
    ) -> Transcript:
        """Messages of a session, a user (all their linked sessions, including
        anonymous ones from before they logged in), an anonymous visitor,
        and/or a time range ``[start, end)``. Combining ``session_id`` with a
        ``user_id``/``visitor_id`` checks ownership (:class:`SessionOwnershipError`)."""
        if visitor_id is not None and user_id is not None:
            caller_user(self, visitor_id, user_id)
        if after is not None:
            wait_for(self, after)
        return self.projection_reads.transcript(
            session_id, user_id=user_id, visitor_id=visitor_id, start=start, end=end
        )

    @checked(start=opt(TIME), end=opt(TIME), as_of=opt(TIME), engagement=engagement_arg,
             after=opt(position_arg))
    def analytics(
        self, *, start: datetime | None = None, end: datetime | None = None,
        as_of: datetime | None = None, engagement: Engagement | None = None, after: int | None = None,
    ) -> Analytics:
        """Session analytics for sessions started in ``[start, end)``, as of
        ``as_of`` (default: the ledger clock); ``after``: see :meth:`wait_for`."""
        if after is not None:
            wait_for(self, after)
        return self.projection_reads.analytics(start=start, end=end, as_of=as_of, engagement=engagement)

    @checked(timeout=DURATION, start=opt(TIME), end=opt(TIME))
    def resessionize(
        self, timeout: timedelta, *, start: datetime | None = None, end: datetime | None = None
    ) -> Resessionized:
        """Conversation counts had the idle timeout been ``timeout`` (read only)."""
        return self.projection_reads.resessionize(timeout, start=start, end=end)

    @checked(user_id=opt(ID), visitor_id=opt(ID), after=opt(position_arg))
    def memory(
        self, *, user_id: str | None = None, visitor_id: str | None = None, after: int | None = None
    ) -> Memory:
        """What the bot remembers about a user, or about a still-anonymous visitor;
        ``after``: read your writes, see :meth:`wait_for`."""
        if after is not None:
            wait_for(self, after)
        return self.projection_reads.memory(user_id=user_id, visitor_id=visitor_id)


__all__ = ["ReadModelQueries"]
