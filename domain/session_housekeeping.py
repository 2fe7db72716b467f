"""The commands on a session that housekeeping records, not its visitor:
the timeout (by the sweeper or a lazy check), the erasure of its content and
its archiving. A base class of :class:`~chatledger.domain.session.Session`;
each checks first, then records one event, like every command.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .conversation import SessionContext, check_name
from .erasure import ERASED_VALUES
from .errors import InvalidCommandError, SessionClosedError
from .policy import TimeoutReason
from .pydantic_aggregates import utc
from .session_data import SessionData
from .tenancy import DEFAULT_TENANT


class SessionHousekeeping(SessionData):
    """Timing out, erasing and archiving a session."""

    if TYPE_CHECKING:  # the Session aggregate's events and eventsourcing's trigger
        TimedOut: type[Any]
        ContentErased: type[Any]
        Archived: type[Any]

        def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None: ...

    def time_out(self, *, detected_at: datetime) -> bool:
        """Record the timeout if the session is expired at ``detected_at``.

        The event is stamped with the moment the session went idle past its
        timeout, so every replay, sweep or lazy check agrees on it.
        """
        detected_at = utc(detected_at)
        if not self.is_expired(detected_at):
            return False
        deadline, reason = self.expiry()
        self.trigger_event(
            self.TimedOut,
            occurred_at=deadline,
            reason=reason,
            idle_since=self.last_activity_at,
            detected_at=detected_at,
            open_tasks=tuple(self.tasks),
            tenant=self.tenant,
        )
        return True

    @classmethod
    def timed_out_event(
        cls,
        session_id: UUID,
        version: int,
        *,
        deadline: datetime,
        reason: TimeoutReason,
        idle_since: datetime,
        detected_at: datetime,
        open_tasks: tuple[str, ...] = (),
        tenant: str = DEFAULT_TENANT,
    ) -> Any:
        """The event (a ``Session.TimedOut``) :meth:`time_out` triggers, built from
        what an index knows of the session (its version, deadline and why, its
        tenant) instead of a loaded aggregate: the sweeper's batch path. For
        version + 1, so the store rejects it if the session moved on."""
        return cls.TimedOut(
            originator_id=session_id,
            originator_version=version + 1,
            timestamp=cls.TimedOut.create_timestamp(),
            occurred_at=deadline,
            reason=reason,
            idle_since=idle_since,
            detected_at=detected_at,
            open_tasks=open_tasks,
            tenant=tenant,
        )

    def blank_content(self) -> None:
        """What ``Session.ContentErased`` does: every personal value reads as erased."""
        self.messages.erase()
        self.client_message_ids = {}
        if self.status == "ended":
            self.close_reason = ERASED_VALUES["reason"]
        erased_value = ERASED_VALUES["value"]
        self.slots = {k: v.model_copy(update={"value": erased_value}) for k, v in self.slots.items()}
        self.carried_slots = {k: v.model_copy(update={"value": erased_value}) for k, v in self.carried_slots.items()}
        self.context = SessionContext.model_validate(ERASED_VALUES["context"])

    def erase_content(self, erasure_id: UUID, *, at: datetime) -> None:
        """Blank this session's personal content (the keys are destroyed elsewhere).

        A session already past its deadline is first recorded as timed out (at
        its deadline), so its events stay in time order."""
        self.time_out(detected_at=at)
        at = max(utc(at), self.latest_event_at)
        self.trigger_event(self.ContentErased, occurred_at=at, erasure_id=erasure_id)

    def record_archive(self, archive: str, *, at: datetime) -> None:
        """Record that retention archived this closed session into ``archive``."""
        at = utc(at)
        if self.status == "active":
            raise SessionClosedError(
                self.id, self.status, f"Session {self.id} is still active; only closed sessions are archived."
            )
        if self.archived_at is not None:
            raise InvalidCommandError(f"Session {self.id} was already archived to {self.archive}.")
        check_name("archive name", archive)
        self.trigger_event(self.Archived, occurred_at=max(at, self.latest_event_at), archive=archive)


__all__ = ["SessionHousekeeping"]
