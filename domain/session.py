"""The ``Session`` aggregate: one continuous conversation, rebuilt from its events.

Commands check first, then trigger one event; an event's ``apply`` only mutates,
so replaying stored events never re-runs a check or reads a clock. Every event
carries ``occurred_at`` (business time); expiry is computed from it alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, JsonValue

from .conversation import (
    Message,
    Role,
    SessionContext,
    SessionSnapshotState,
    Slot,
    SlotScope,
    Status,
    check_name,
    check_text,
)
from .erasure import ERASED_METADATA, ERASED_VALUES
from .errors import (
    ClientMessageIdConflictError,
    InvalidCommandError,
    SessionClosedError,
    SessionExpiredError,
    TaskStateError,
)
from .model import Aggregate, AggregateSnapshot, utc
from .policy import AppliedPolicy, TimeoutReason, is_past_deadline


class Session(Aggregate):
    """One conversation of one visitor.

    State: visitor and user ids, channel, status, start and last-activity times,
    ordered messages, slots, tasks in progress and the previous session's id.
    """

    # Lists and dicts of frozen values only (see Aggregate.__deepcopy__).
    _shallow_containers = Aggregate._shallow_containers | {
        "messages", "slots", "carried_slots", "tasks", "completed_tasks", "client_message_ids",
    }  # fmt: skip

    class Snapshot(AggregateSnapshot):
        # 2 (release 0.2.0): ContentErased forgets client message ids and end
        # reasons; a snapshot 0.1.0 took after an erasure still holds them.
        class_version = 2
        state: SessionSnapshotState

    class Event(Aggregate.Event):
        def mutate(self, aggregate: Any) -> Any:
            # Every event moves the session's clock: later events may not be
            # stamped earlier (point-in-time reads stop at the first later one).
            session = super().mutate(aggregate)
            if session is not None:
                session.last_event_at = self.occurred_at
            return session

    class Started(Event, Aggregate.Created):
        """The first user message of a visitor arrived with no live session."""

        visitor_id: str
        user_id: str | None = None
        channel: str
        context: SessionContext = SessionContext()
        policy: AppliedPolicy
        previous_session_id: UUID | None = None
        is_returning: bool = False
        away_for_s: float | None = None
        carried_slots: dict[str, Slot] = Field(default_factory=dict)

        def apply(self, s: Session) -> None:
            s.visitor_id = self.visitor_id
            s.user_id = self.user_id
            s.channel = self.channel
            s.context = self.context
            s.policy = self.policy
            s.status = "active"
            s.started_at = self.occurred_at
            s.last_activity_at = self.occurred_at
            s.closed_at = None
            s.close_reason = None
            s.previous_session_id = self.previous_session_id
            s.is_returning = self.is_returning
            s.away_for_s = self.away_for_s
            s.carried_slots = dict(self.carried_slots)
            s.messages = []
            s.slots = dict(self.carried_slots)
            s.tasks = {}
            s.completed_tasks = []
            s.client_message_ids = {}
            s.archived_at = None
            s.archive = None

    class MessageRecorded(Event):
        text: str
        client_message_id: str | None = None
        metadata: dict[str, JsonValue] = Field(default_factory=dict)
        role: Role

        def apply(self, s: Session) -> None:
            message = Message(
                position=len(s.messages),
                role=self.role,
                text=self.text,
                at=self.occurred_at,
                client_message_id=self.client_message_id,
                metadata=self.metadata,
            )
            s.messages.append(message)
            if self.client_message_id is not None:
                s.client_message_ids[self.client_message_id] = message.position
            s.last_activity_at = self.occurred_at

    class MessageReceived(MessageRecorded):
        """A user message arrived."""

        role: Literal["user"] = "user"

    class MessageSent(MessageRecorded):
        """The bot (or the system) sent a message."""

        role: Literal["bot", "system"] = "bot"

    class SlotSet(Event):
        key: str
        value: JsonValue
        scope: SlotScope = "session"

        def apply(self, s: Session) -> None:
            s.slots[self.key] = Slot(value=self.value, scope=self.scope, set_at=self.occurred_at)
            s.last_activity_at = self.occurred_at

    class SlotCleared(Event):
        key: str

        def apply(self, s: Session) -> None:
            s.slots.pop(self.key, None)
            s.last_activity_at = self.occurred_at

    class TaskStarted(Event):
        task: str

        def apply(self, s: Session) -> None:
            s.tasks[self.task] = self.occurred_at
            s.last_activity_at = self.occurred_at

    class TaskCompleted(Event):
        task: str

        def apply(self, s: Session) -> None:
            del s.tasks[self.task]
            s.completed_tasks.append(self.task)
            s.last_activity_at = self.occurred_at

    class IdentityLinked(Event):
        """The visitor of this session was identified as ``user_id``."""

        user_id: str

        def apply(self, s: Session) -> None:
            s.user_id = self.user_id

    class TimedOut(Event):
        """The session went idle past its timeout.

        ``occurred_at`` is the moment it expired (last activity + timeout, or the
        maximum length), not the moment someone noticed (``detected_at``).
        """

        reason: TimeoutReason
        idle_since: AwareDatetime
        detected_at: AwareDatetime
        open_tasks: tuple[str, ...] = ()

        def apply(self, s: Session) -> None:
            s.status = "timed_out"
            s.closed_at = self.occurred_at
            s.close_reason = self.reason

    class Ended(Event):
        """The session was ended on purpose (the bot or the user said goodbye)."""

        reason: str = "ended"

        def apply(self, s: Session) -> None:
            s.status = "ended"
            s.closed_at = self.occurred_at
            s.close_reason = self.reason

    class ContentErased(Event):
        """The visitor's personal content was crypto-shredded (see ``Visitor.DataErased``).

        Recorded on every session of the erased visitor, in the transaction that
        destroys the key, so every cached copy of the session (in any process)
        blanks its content when it catches up, and nothing later re-stores it.
        """

        erasure_id: UUID

        def apply(self, s: Session) -> None:
            s.messages = [
                m.model_copy(
                    update={
                        "text": ERASED_VALUES["text"],
                        "metadata": dict(ERASED_METADATA) if m.metadata else {},
                        "client_message_id": ERASED_VALUES["client_message_id"],
                    }
                )
                for m in s.messages
            ]
            s.client_message_ids = {}
            if s.status == "ended":
                s.close_reason = ERASED_VALUES["reason"]
            erased_value = ERASED_VALUES["value"]
            s.slots = {k: v.model_copy(update={"value": erased_value}) for k, v in s.slots.items()}
            s.carried_slots = {
                k: v.model_copy(update={"value": erased_value}) for k, v in s.carried_slots.items()
            }
            s.context = SessionContext.model_validate(ERASED_VALUES["context"])

    class Archived(Event):
        """Retention wrote this closed session to an archive file.

        The events stay in the log (erasure is separate and explicit); read
        models drop the session's bulky rows when they see this event, so a
        rebuild from scratch drops exactly the same rows as the live run did.
        """

        archive: str

        def apply(self, s: Session) -> None:
            s.archived_at = self.occurred_at
            s.archive = self.archive

    if TYPE_CHECKING:  # attributes set by the events above (not dataclass fields)
        visitor_id: str
        user_id: str | None
        channel: str
        context: SessionContext
        policy: AppliedPolicy
        status: Status
        started_at: datetime
        last_activity_at: datetime
        closed_at: datetime | None
        close_reason: str | None
        previous_session_id: UUID | None
        is_returning: bool
        away_for_s: float | None
        carried_slots: dict[str, Slot]
        messages: list[Message]
        slots: dict[str, Slot]
        tasks: dict[str, datetime]
        completed_tasks: list[str]
        client_message_ids: dict[str, int]
        archived_at: datetime | None
        archive: str | None

    # ---- creation ---------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        session_id: UUID,
        visitor_id: str,
        at: datetime,
        policy: AppliedPolicy,
        channel: str = "web",
        user_id: str | None = None,
        context: SessionContext | None = None,
        previous: Session | None = None,
        carry_over_slots: frozenset[str] = frozenset(),
    ) -> Session:
        """Open a session. ``previous`` is the visitor's last session, if any."""
        at = utc(at)
        check_name("visitor id", visitor_id)
        check_name("channel", channel)
        carried: dict[str, Slot] = {}
        away_for_s = None
        if previous is not None:
            if previous.status == "active":
                msg = "the previous session must be closed before a new one starts"
                raise InvalidCommandError(msg)
            carried = {k: v for k, v in previous.slots.items() if k in carry_over_slots}
            away_for_s = (at - previous.last_activity_at).total_seconds()
        return cls._create(
            cls.Started,
            id=session_id,
            occurred_at=at,
            visitor_id=visitor_id,
            user_id=user_id,
            channel=channel,
            context=context or SessionContext(),
            policy=policy,
            previous_session_id=previous.id if previous else None,
            is_returning=previous is not None,
            away_for_s=away_for_s,
            carried_slots=carried,
        )

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

    def _check_open(self, at: datetime) -> datetime:
        at = utc(at)
        if self.status != "active":
            raise SessionClosedError(self.id, self.status)
        if self.is_expired(at):
            raise SessionExpiredError(self.id, self.last_activity_at, self.expiry()[0])
        if at < self.latest_event_at:
            msg = (
                f"at={at.isoformat()} is earlier than the session's last event "
                f"{self.latest_event_at.isoformat()}; events must be recorded in order."
            )
            raise InvalidCommandError(msg)
        return at

    @property
    def latest_event_at(self) -> datetime:
        """The business time of the session's last event (no new event may be earlier)."""
        latest = getattr(self, "last_event_at", None)
        return latest if latest is not None else self.last_activity_at

    # ---- commands ---------------------------------------------------------

    def receive(
        self,
        text: str,
        *,
        at: datetime,
        client_message_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        at = self._check_open(at)
        self._check_client_id(client_message_id, "user")
        self.trigger_event(
            self.MessageReceived,
            occurred_at=at,
            text=check_text(text),
            client_message_id=client_message_id,
            metadata=metadata or {},
        )
        return self.messages[-1]

    def send(
        self,
        text: str,
        *,
        at: datetime,
        role: Literal["bot", "system"] = "bot",
        client_message_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        at = self._check_open(at)
        if role not in ("bot", "system"):
            raise InvalidCommandError(f"A reply's role is 'bot' or 'system', not {role!r}.")
        self._check_client_id(client_message_id, role)
        self.trigger_event(
            self.MessageSent,
            occurred_at=at,
            text=check_text(text),
            role=role,
            client_message_id=client_message_id,
            metadata=metadata or {},
        )
        return self.messages[-1]

    def set_slot(self, key: str, value: Any, *, at: datetime, scope: SlotScope = "session") -> None:
        at = self._check_open(at)
        if scope not in ("session", "user"):
            raise InvalidCommandError(f"A slot's scope is 'session' or 'user', not {scope!r}.")
        self.trigger_event(
            self.SlotSet, occurred_at=at, key=check_name("slot name", key), value=value, scope=scope
        )

    def clear_slot(self, key: str, *, at: datetime) -> None:
        at = self._check_open(at)
        if key not in self.slots:
            raise InvalidCommandError(f"Slot {key!r} is not set in session {self.id}.")
        self.trigger_event(self.SlotCleared, occurred_at=at, key=key)

    def start_task(self, task: str, *, at: datetime) -> None:
        at = self._check_open(at)
        check_name("task name", task)
        if task in self.tasks:
            raise TaskStateError(
                f"Task {task!r} is already in progress in session {self.id}; "
                "complete it before starting it again.",
                session_id=self.id,
                task=task,
            )
        self.trigger_event(self.TaskStarted, occurred_at=at, task=task)

    def complete_task(self, task: str, *, at: datetime) -> None:
        at = self._check_open(at)
        if task not in self.tasks:
            raise TaskStateError(
                f"Task {task!r} is not in progress in session {self.id}; start it first.",
                session_id=self.id,
                task=task,
            )
        self.trigger_event(self.TaskCompleted, occurred_at=at, task=task)

    def link_identity(self, user_id: str, *, at: datetime) -> None:
        check_name("user id", user_id)
        if self.user_id == user_id:
            return
        self.trigger_event(self.IdentityLinked, occurred_at=utc(at), user_id=user_id)

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
    ) -> Session.TimedOut:
        """The event :meth:`time_out` triggers, built from what an index knows of
        the session (its version, deadline and why) instead of a loaded aggregate:
        the sweeper's batch path. It is meant for version + 1, so the store
        rejects it if the session moved on meanwhile. ``detected_at`` in UTC."""
        return cls.TimedOut(
            originator_id=session_id,
            originator_version=version + 1,
            timestamp=cls.TimedOut.create_timestamp(),
            occurred_at=deadline,
            reason=reason,
            idle_since=idle_since,
            detected_at=detected_at,
            open_tasks=open_tasks,
        )

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

    def end(self, *, at: datetime, reason: str = "ended") -> None:
        at = self._check_open(at)
        self.trigger_event(self.Ended, occurred_at=at, reason=check_name("reason", reason))

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

    # ---- queries ----------------------------------------------------------

    def message_for(self, client_message_id: str) -> Message | None:
        position = self.client_message_ids.get(client_message_id)
        return None if position is None else self.messages[position]
