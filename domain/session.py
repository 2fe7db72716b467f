"""The ``Session`` aggregate: one continuous conversation, rebuilt from its events.

Commands check first, then trigger one event; an event's ``apply`` only mutates,
so replaying stored events never re-runs a check or reads a clock. Every event
carries ``occurred_at`` (business time); expiry is computed from it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, JsonValue, PrivateAttr

from .conversation import (
    Message,
    Role,
    SessionContext,
    Slot,
    SlotScope,
    check_name,
    check_text,
)
from .errors import InvalidCommandError
from .messages import MessageLog
from .pydantic_aggregates import Aggregate, AggregateSnapshot, utc
from .policy import AppliedPolicy, TimeoutReason
from .session_data import SessionSnapshotState, restore_messages, snapshot_state
from .session_housekeeping import SessionHousekeeping
from .tenancy import DEFAULT_TENANT, Upcaster, check_tenant, default_tenant


class Session(Aggregate, SessionHousekeeping):
    """One conversation of one visitor.

    State (:class:`~chatledger.domain.session_data.SessionData`): visitor and
    user ids, channel, status, start and last-activity times, ordered messages,
    slots, tasks in progress and the previous session's id.
    """

    # Lists and dicts of frozen values only (see Aggregate.__deepcopy__).
    shallow_containers = Aggregate.shallow_containers | {
        "messages", "slots", "carried_slots", "tasks", "completed_tasks", "client_message_ids",
    }  # fmt: skip

    class Snapshot(AggregateSnapshot):
        """The session's state without its messages: their count (and how many
        were erased); the messages are read from the log when they are read
        (:class:`~chatledger.domain.messages.MessageLog`), so a snapshot's size
        and cost do not grow with the conversation."""

        # 2 (0.2.0): ContentErased forgets client message ids and end reasons; a snapshot
        # 0.1.0 took after an erasure still holds them. 3 (0.4.0): message_count and
        # erased_messages, not the messages. 4 (0.5): the tenant.
        class_version = 4
        state: SessionSnapshotState
        _stored_messages: Sequence[Message] | None = PrivateAttr(default=None)

        def with_stored_messages(self, stored: Sequence[Message]) -> Session.Snapshot:
            """This snapshot, its messages read from ``stored`` (the infrastructure's
            reader of the message events up to the snapshot's version)."""
            self._stored_messages = stored
            return self

        @classmethod
        def state_of(cls, aggregate: Any) -> dict[str, Any]:
            return snapshot_state(super().state_of(aggregate))

        def mutate(self, _: None) -> Session:
            session = super().mutate(_)
            assert isinstance(session, Session)
            restore_messages(session.__dict__, self._stored_messages)
            return session

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

        class_version = 2  # 2 (0.5): the tenant; stored before it, the default tenant
        visitor_id: str
        tenant: str
        user_id: str | None = None
        channel: str
        context: SessionContext = SessionContext()
        policy: AppliedPolicy
        previous_session_id: UUID | None = None
        is_returning: bool = False
        away_for_s: float | None = None
        carried_slots: dict[str, Slot] = Field(default_factory=dict)
        upcast_v1_v2: ClassVar[Upcaster] = staticmethod(default_tenant)

        def apply(self, s: Session) -> None:
            s.visitor_id = self.visitor_id
            s.tenant = self.tenant
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
            s.messages = MessageLog()
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

        def message(self, position: int) -> Message:
            """The message this event records, at ``position`` in its session."""
            return Message(
                position=position,
                role=self.role,
                text=self.text,
                at=self.occurred_at,
                client_message_id=self.client_message_id,
                metadata=self.metadata,
            )

        def apply(self, s: Session) -> None:
            message = self.message(len(s.messages))
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

        ``occurred_at`` is the moment it timed out (last activity + timeout, or the
        maximum length), not the moment someone noticed (``detected_at``).
        """

        class_version = 2  # 2 (0.5): the tenant (the closed-session index keeps it)
        reason: TimeoutReason
        idle_since: AwareDatetime
        detected_at: AwareDatetime
        open_tasks: tuple[str, ...] = ()
        tenant: str
        upcast_v1_v2: ClassVar[Upcaster] = staticmethod(default_tenant)

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
            s.blank_content()

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
        tenant: str = DEFAULT_TENANT,
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
            tenant=check_tenant(tenant),
            user_id=user_id,
            channel=channel,
            context=context or SessionContext(),
            policy=policy,
            previous_session_id=previous.id if previous else None,
            is_returning=previous is not None,
            away_for_s=away_for_s,
            carried_slots=carried,
        )

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
        self._check_task(check_name("task name", task), in_progress=False)
        self.trigger_event(self.TaskStarted, occurred_at=at, task=task)

    def complete_task(self, task: str, *, at: datetime) -> None:
        at = self._check_open(at)
        self._check_task(task, in_progress=True)
        self.trigger_event(self.TaskCompleted, occurred_at=at, task=task)

    def link_identity(self, user_id: str, *, at: datetime) -> None:
        check_name("user id", user_id)
        if self.user_id == user_id:
            return
        self.trigger_event(self.IdentityLinked, occurred_at=utc(at), user_id=user_id)

    def end(self, *, at: datetime, reason: str = "ended") -> None:
        at = self._check_open(at)
        self.trigger_event(self.Ended, occurred_at=at, reason=check_name("reason", reason))
