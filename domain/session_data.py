"""A session's data, defined once, and the questions answered from it alone.

:class:`SessionData` declares every attribute a
:class:`~chatledger.domain.session.Session` holds (its events set them) and is
the aggregate's base class; the state of a session's snapshot
(:data:`SessionSnapshotState`) is derived from the same declarations, with
the message count in place of the messages (they are read from the log, see
:mod:`chatledger.domain.messages`). A field added here is on the aggregate and
in its snapshot at once.

Its methods are the session's clock (expiry: idle timeout or maximum length)
and the checks a command makes before it records anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, get_type_hints
from uuid import UUID

from pydantic import AwareDatetime, create_model

from .conversation import Message, Role, SessionContext, Slot, Status
from .errors import (
    ClientMessageIdConflictError,
    InvalidCommandError,
    SessionClosedError,
    SessionTimedOutError,
    TaskStateError,
)
from .messages import MessageLog, NoStoredMessages
from .pydantic_aggregates import SnapshotState, utc
from .policy import AppliedPolicy, TimeoutReason, is_past_deadline


class SessionData:
    """What a session holds (set by its events; see :mod:`chatledger.domain.session`)."""

    if TYPE_CHECKING:

        @property
        def id(self) -> UUID: ...  # the aggregate's (eventsourcing's); not snapshot state

    visitor_id: str
    tenant: str
    user_id: str | None
    channel: str
    context: SessionContext
    policy: AppliedPolicy
    status: Status
    started_at: AwareDatetime
    last_activity_at: AwareDatetime
    closed_at: AwareDatetime | None
    close_reason: str | None
    previous_session_id: UUID | None
    is_returning: bool
    away_for_s: float | None
    carried_slots: dict[str, Slot]
    messages: MessageLog
    slots: dict[str, Slot]
    tasks: dict[str, AwareDatetime]
    completed_tasks: list[str]
    client_message_ids: dict[str, int]
    # Set by every event (``Session.Event.mutate``), not by ``Started``; a
    # snapshot of 0.1.0 had neither it nor the archive fields.
    last_event_at: AwareDatetime | None = None
    archived_at: AwareDatetime | None = None
    archive: str | None = None

    # ---- time -------------------------------------------------------------

    @property
    def idle_timeout(self) -> timedelta:
        seconds = self.policy.task_idle_timeout_s if self.tasks else self.policy.idle_timeout_s
        return timedelta(seconds=seconds)

    def expiry(self) -> tuple[datetime, TimeoutReason]:
        """When this session expires if nothing else happens, and why."""
        return self.policy.deadline(
            self.started_at, self.last_activity_at, tasks_open=bool(self.tasks)
        )

    def is_expired(self, at: datetime) -> bool:
        """True when the session is active but ``at`` is past its deadline.

        Idle time that *exceeds* the timeout expires the session; exactly the
        timeout does not.
        """
        return self.status == "active" and is_past_deadline(self.expiry()[0], at)

    @property
    def latest_event_at(self) -> datetime:
        """The business time of the session's last event (no new event may be earlier)."""
        latest = self.last_event_at
        return latest if latest is not None else self.last_activity_at

    # ---- checks -----------------------------------------------------------

    def _check_open(self, at: datetime) -> datetime:
        at = utc(at)
        if self.status != "active":
            raise SessionClosedError(self.id, self.status)
        if self.is_expired(at):
            raise SessionTimedOutError(self.id, self.last_activity_at, self.expiry()[0])
        if at < self.latest_event_at:
            msg = (
                f"at={at.isoformat()} is earlier than the session's last event "
                f"{self.latest_event_at.isoformat()}; events must be recorded in order."
            )
            raise InvalidCommandError(msg)
        return at

    def _check_client_id(self, client_message_id: str | None, role: Role) -> None:
        """A client id names one message of a session; a second message may not take it."""
        if client_message_id is None:
            return
        seen = self.message_for(client_message_id)
        if seen is None:
            return
        if seen.role != role:
            raise ClientMessageIdConflictError(
                self.id, client_message_id, recorded_role=seen.role, role=role
            )
        msg = (
            f"Client message id {client_message_id!r} is already recorded in session {self.id}; "
            "a retry is recognised by the ledger and appends nothing."
        )
        raise InvalidCommandError(msg)

    def _check_task(self, task: str, *, in_progress: bool) -> None:
        """``task`` is (``in_progress``) or is not in progress, else :class:`TaskStateError`."""
        if (task in self.tasks) == in_progress:
            return
        if in_progress:
            msg = f"Task {task!r} is not in progress in session {self.id}; start it first."
        else:
            msg = f"Task {task!r} is already in progress in session {self.id}; complete it before starting it again."
        raise TaskStateError(msg, session_id=self.id, task=task)

    # ---- queries ----------------------------------------------------------

    def message_for(self, client_message_id: str) -> Message | None:
        position = self.client_message_ids.get(client_message_id)
        return None if position is None else self.messages[position]


def _snapshot_fields() -> dict[str, Any]:
    hints = get_type_hints(SessionData, include_extras=True)
    fields: dict[str, Any] = {
        name: (hint, SessionData.__dict__.get(name, ...))
        for name, hint in hints.items()
        if name != "messages"
    }
    fields["message_count"] = (int, ...)
    fields["erased_messages"] = (int, 0)
    return fields


if TYPE_CHECKING:
    SessionSnapshotState = SnapshotState
else:
    SessionSnapshotState = create_model("SessionSnapshotState", __base__=SnapshotState, **_snapshot_fields())
    SessionSnapshotState.__module__ = __name__
    SessionSnapshotState.__doc__ = (
        "The state in a session's snapshot: :class:`SessionData`'s fields, the "
        "messages as ``message_count`` (and ``erased_messages``, how many of the first were erased)."
    )


def snapshot_state(state: dict[str, Any]) -> dict[str, Any]:
    """A session's attributes as its snapshot keeps them (the messages as counts)."""
    messages = state.pop("messages")
    state["message_count"] = len(messages)
    state["erased_messages"] = getattr(messages, "erased_count", 0)
    return state


def restore_messages(state: dict[str, Any], stored: Any) -> None:
    """Turn a snapshot's counts back into the session's :class:`MessageLog`,
    its first messages read from ``stored`` (the store's reader, if given)."""
    count, erased = state.pop("message_count"), state.pop("erased_messages")
    if stored is None or len(stored) != count:
        stored = NoStoredMessages(count)
    state["messages"] = MessageLog(stored, erased=erased)


__all__ = ["SessionData", "SessionSnapshotState", "restore_messages", "snapshot_state"]
