"""``ChatLedger``: the application a chatbot backend embeds.

Commands append events and return plain data; queries rebuild immutable state
from the event log. Every command that touches several aggregates saves them in
one ``save(...)`` call, so it is one atomic write, and every write relies on the
store's optimistic concurrency: a command that lost a race is re-run on fresh
state (commands are safe to re-run: they re-check everything) or, after
``conflict_retries`` attempts, fails with :class:`ConcurrencyConflictError`.
"""

from __future__ import annotations

import functools
import inspect
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from datetime import datetime, timedelta
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar
from uuid import UUID

from chatledger.domain import validation as v
from chatledger.domain.erasure import ErasureReceipt
from chatledger.domain.errors import (
    ClientMessageIdConflictError,
    ConcurrencyConflictError,
    ConfigurationError,
    IdentityMismatchError,
    InvalidCommandError,
    InvalidPolicyError,
    InvalidValueError,
    SessionOwnershipError,
    UnknownSessionError,
    ValueRefusedError,
)
from chatledger.domain.ids import uuid7
from chatledger.domain.model import Aggregate, DomainEvent, utc
from chatledger.domain.policy import AppliedPolicy, SessionPolicy
from chatledger.domain.session import Message, Session, SessionContext, SlotScope
from chatledger.domain.state import SessionState, Turn, VisitorState
from chatledger.domain.visitor import Visitor, visitor_aggregate_id
from chatledger.infrastructure.database import make_engine
from chatledger.infrastructure.hashchain import VerificationReport
from chatledger.infrastructure.persistence import eventsourcing_env, schema_lock
from chatledger.infrastructure.settings import Settings
from chatledger.infrastructure.shredding import ErasedSnapshotError
from chatledger.infrastructure.snapshots import SnapshotStore
from chatledger.projections import DEFAULT_READ_MODELS
from chatledger.projections.base import (
    Progress,
    ProjectionFailure,
    ProjectionStatus,
    Projector,
    ReadModel,
)
from chatledger.projections.results import (
    Analytics,
    Engagement,
    Memory,
    Resessionized,
    Transcript,
)
from chatledger.projections.service import ProjectionReads
from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.persistence import DataError, PersistenceError, RecordConflictError

from .audit import (
    HistoryStep,
    erase_subject,
    export_bundle,
    install_key_ring,
    iter_history,
    verify_log,
)
from .clock import Clock, system_clock

if TYPE_CHECKING:
    from chatledger.infrastructure.scheduler import BackgroundJobs
    from chatledger.infrastructure.webhooks import WebhookWorker

    from .retention import ArchivedSession, ArchiveResult, RetentionPolicy
    from .subscribers import LogEvent

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Check = Callable[[str, Any, v.Limits], Any]


def _checked(**checks: Check) -> Callable[[F], F]:
    """Check the named arguments of a public method with :mod:`domain.validation`
    (against ``self.limits``) before the method runs: before anything is read
    for writing, a lock is taken or anything is written. A check returns the
    value to use (datetimes come back in UTC)."""

    def decorate(method: F) -> F:
        signature = inspect.signature(method)

        @functools.wraps(method)
        def checked(self: ChatLedger, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(self, *args, **kwargs)
            arguments, limits = bound.arguments, self.limits
            for name, check in checks.items():
                if name in arguments:
                    arguments[name] = check(name, arguments[name], limits)
            return method(*bound.args, **bound.kwargs)

        return checked  # type: ignore[return-value]

    return decorate


def _opt(check: Check) -> Check:
    return lambda name, value, limits: None if value is None else check(name, value, limits)


def _choice(*choices: str) -> Check:
    return lambda name, value, limits: v.check_choice(name, value, choices)


def _context(name: str, value: Any, limits: v.Limits) -> SessionContext | None:
    if value is None or isinstance(value, SessionContext):
        if value is not None:
            v.check_object(name, value.model_dump(), limits)
        return value
    return _validated(SessionContext, v.check_object(name, value, limits))


def _path(name: str, value: Any, limits: v.Limits) -> Any:
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidValueError(name, "type", f"{name} must be a str or a path, not {type(value).__name__}.")
    v.check_str(name, os.fspath(value), 4096, what="a path")
    return value


def _writer(name: str, value: Any, limits: v.Limits) -> Any:
    if not callable(getattr(value, "write", None)):
        raise InvalidValueError(name, "type", f"{name} must be a text file open for writing, not {type(value).__name__}.")
    return value


def _engagement(name: str, value: Any, limits: v.Limits) -> Any:
    if value is not None and not isinstance(value, Engagement):
        raise InvalidValueError(name, "type", f"{name} must be an Engagement or None, not {type(value).__name__}.")
    return value


def _callback(name: str, value: Any, limits: v.Limits) -> Any:
    if value is not None and not callable(value):
        raise InvalidValueError(name, "type", f"{name} must be a callable or None, not {type(value).__name__}.")
    return value


def _retention(name: str, value: Any, limits: v.Limits) -> Any:
    from .retention import RetentionPolicy

    if value is not None and not isinstance(value, RetentionPolicy):
        raise InvalidValueError(name, "type", f"{name} must be a RetentionPolicy or None, not {type(value).__name__}.")
    return value


def _interval(name: str, value: Any, limits: v.Limits) -> float:
    return v.check_number(name, value, maximum=86_400.0 * 366)


def _position(name: str, value: Any, limits: v.Limits) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(name, "type", f"{name} must be an int (a log position), not {type(value).__name__}.")
    if not 0 <= value < v.INT_BOUND:
        raise InvalidValueError(
            name, "position_range", f"{name}={value} must be a log position: 0 (the start) or more, below 2**63."
        )
    return value


def _flag(name: str, value: Any, limits: v.Limits) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError(name, "type", f"{name} must be True or False, not {type(value).__name__}.")
    return value


def _feed_limit(name: str, value: Any, limits: v.Limits) -> int:
    from .subscribers import MAX_FEED_BATCH

    v.check_count(name, value, limits)
    if value > MAX_FEED_BATCH:
        raise InvalidValueError(
            name, "count_range", f"{name}={value} is over {MAX_FEED_BATCH}; read in pages of at most that many."
        )
    return int(value)


ID, TEXT, SID, OBJ, JSON = v.check_id, v.check_text, v.check_session_id, v.check_object, v.check_json
COUNT = v.check_count
TIME: Check = lambda name, value, limits: v.check_time(name, value)
DURATION: Check = lambda name, value, limits: v.check_duration(name, value)


class ChatLedger(Application[UUID]):
    """Event-sourced session management for one bot.

    Open it with :meth:`open`; keep one instance per process (it owns the
    connection pool) and share it between threads.
    """

    name = "ChatLedger"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        policy: SessionPolicy | None = None,
        clock: Clock | None = None,
        read_models: Sequence[type[ReadModel]] | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, Settings):
            raise ConfigurationError(f"settings must be a chatledger Settings, not {type(settings).__name__}.")
        if policy is not None and not isinstance(policy, SessionPolicy):
            raise InvalidPolicyError(f"policy must be a SessionPolicy, not {type(policy).__name__}.")
        if clock is not None and not callable(clock):
            raise ConfigurationError(f"clock must be a callable returning an aware datetime, not {type(clock).__name__}.")
        self.settings = settings or Settings()
        self.limits: v.Limits = self.settings.limits
        self.read_models = list(DEFAULT_READ_MODELS if read_models is None else read_models)
        self.policy = policy or SessionPolicy()
        self.clock: Clock = clock or system_clock
        self.snapshotting_intervals = {  # type: ignore[misc]
            Session: self.settings.snapshot_interval,
            Visitor: self.settings.snapshot_interval,
        }
        self._saving = threading.local()  # the aggregates this thread is saving
        self._jobs: BackgroundJobs | None = None
        try:
            env = eventsourcing_env(self.settings)
            with schema_lock(self.settings):
                super().__init__(env=env)
        except (OSError, PersistenceError, sqlite3.Error) as err:
            if self.settings.backend != "sqlite":
                raise
            path = os.path.abspath(self.settings.url().database or "")
            raise ConfigurationError(
                f"Cannot open the SQLite database at {path} ({type(err).__name__}: {err}). Check "
                "--database (or CHATLEDGER_DATABASE_URL): it must name a chatledger SQLite file, "
                "or a new one in a folder this process can write to."
            ) from err
        install_key_ring(self)

    @classmethod
    def open(
        cls,
        database_url: str | None = None,
        *,
        policy: SessionPolicy | None = None,
        clock: Clock | None = None,
        **settings: Any,
    ) -> ChatLedger:
        """Open (and create if needed) the ledger at ``database_url``.

        Without a URL, ``CHATLEDGER_DATABASE_URL`` or ``sqlite:///chatledger.db``.
        Extra keyword arguments are :class:`Settings` fields.
        """
        if database_url is not None:
            settings["database_url"] = database_url
        return cls(Settings(**settings), policy=policy, clock=clock)

    @cached_property
    def projector(self) -> Projector:
        """The read models of this ledger (tables in the same database), kept
        current by ``ledger.projector.catch_up()`` or a background runner."""
        with schema_lock(self.settings):
            return Projector(
                self.name,
                self.recorder,
                self.mapper,
                make_engine(self.settings),
                self.read_models,
                ddl_lock=lambda: schema_lock(self.settings),
            )

    @cached_property
    def _reads(self) -> ProjectionReads:
        return ProjectionReads(self.projector, self.clock)

    # ------------------------------------------------------------------ read models

    @_checked(progress=_callback)
    def catch_up(self, *, progress: Progress | None = None) -> int:
        """Bring every read model up to the head of the log; return events applied.

        For a background runner use ``ledger.projector.start(interval)`` (and
        ``stop()``), or leave it to ``chatledger projections run``.
        """
        return self.projector.catch_up(progress=progress)

    @_checked(position=_position, limit=_feed_limit, content=_flag)
    def events_after(self, position: int = 0, *, limit: int = 1000, content: bool = False) -> list[LogEvent]:
        """The events recorded after ``position`` (0: from the start), in log
        order, at most ``limit``; resume with the last one's ``position``. No
        event is ever skipped, also while writers append. Personal fields are
        sealed unless ``content`` is True (then decrypted; erased content reads
        as erased). See docs/projections.md, "Subscribers"."""
        from .subscribers import read_events

        return read_events(self, position, limit, content=content)

    def webhook(self, name: str, url: str, **options: Any) -> WebhookWorker:
        """A delivery worker that posts each event, in log order and at least
        once, to ``url``; its position is stored under ``name``. Options:
        see :class:`~chatledger.infrastructure.webhooks.WebhookWorker`."""
        from chatledger.infrastructure.webhooks import WebhookWorker

        return WebhookWorker(self, name, url, **options)

    def projection_status(self) -> list[ProjectionStatus]:
        """Each read model's position, the head of the log, the lag, and how
        many events it could not apply (``failed``)."""
        return self.projector.status()

    @_checked(name=_opt(ID))
    def projection_failures(self, name: str | None = None) -> list[ProjectionFailure]:
        """The events read models could not apply (recorded and skipped by
        that read model only), of read model ``name`` or of all, in log order.
        A rebuild of the read model applies them again."""
        return self.projector.failures(name)

    @_checked(session_id=_opt(SID), user_id=_opt(ID), visitor_id=_opt(ID), start=_opt(TIME), end=_opt(TIME))
    def transcript(
        self,
        session_id: UUID | str | None = None,
        *,
        user_id: str | None = None,
        visitor_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Transcript:
        """Messages of a session, a user (all their linked sessions, including
        anonymous ones from before they logged in), an anonymous visitor,
        and/or a time range ``[start, end)``. Combining ``session_id`` with a
        ``user_id``/``visitor_id`` checks ownership (:class:`SessionOwnershipError`)."""
        if visitor_id is not None and user_id is not None:
            self._caller_user(visitor_id, user_id)
        return self._reads.transcript(
            session_id, user_id=user_id, visitor_id=visitor_id, start=start, end=end
        )

    @_checked(start=_opt(TIME), end=_opt(TIME), as_of=_opt(TIME), engagement=_engagement)
    def analytics(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        as_of: datetime | None = None,
        engagement: Engagement | None = None,
    ) -> Analytics:
        """Session analytics for sessions started in ``[start, end)``, as of
        ``as_of`` (default: the ledger clock)."""
        return self._reads.analytics(start=start, end=end, as_of=as_of, engagement=engagement)

    @_checked(timeout=DURATION, start=_opt(TIME), end=_opt(TIME))
    def resessionize(
        self, timeout: timedelta, *, start: datetime | None = None, end: datetime | None = None
    ) -> Resessionized:
        """Conversation counts had the idle timeout been ``timeout`` (read only)."""
        return self._reads.resessionize(timeout, start=start, end=end)

    @_checked(user_id=_opt(ID), visitor_id=_opt(ID))
    def memory(self, *, user_id: str | None = None, visitor_id: str | None = None) -> Memory:
        """What the bot remembers about a user, or about a still-anonymous visitor."""
        return self._reads.memory(user_id=user_id, visitor_id=visitor_id)

    def close(self) -> None:
        if self.closing.is_set():
            return
        self.stop_background_jobs()
        if "projector" in self.__dict__:
            self.projector.stop()
            self.projector.engine.dispose()
        super().close()

    # ------------------------------------------------------------------ saving

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Record the pending events of ``objs`` in one transaction (the
        library's ``save``), then keep the cache and the snapshots cheap:

        - a snapshot due at the version an aggregate was just saved at is taken
          from that aggregate (see :meth:`take_snapshot`), not rebuilt from the
          store;
        - a copy of each saved aggregate goes into the aggregate cache, so the
          next command does not re-read and re-validate the events it has just
          written. The cache is still fast-forwarded from the store on every
          read, so a copy that another writer has overtaken is caught up as
          before, and only committed state is ever cached.
        """
        aggregates = {obj.id: obj for obj in objs if isinstance(obj, Aggregate)}
        self._saving.aggregates = aggregates
        try:
            recordings = super().save(*objs, **kwargs)
        except DataError as err:  # validation let through what the database refuses
            raise ValueRefusedError(str(err)) from err
        finally:
            self._saving.aggregates = None
        repository = self.repository
        if repository.cache is not None and repository.fastforward:
            for aggregate_id, aggregate in aggregates.items():
                repository.cache.put(aggregate_id, deepcopy(aggregate))
        return recordings

    def construct_snapshot_store(self) -> SnapshotStore:
        """Snapshots at another version than their class's are passed over
        (see :class:`~chatledger.infrastructure.snapshots.SnapshotStore`)."""
        return SnapshotStore(mapper=self.mapper, recorder=self.factory.aggregate_recorder(purpose="snapshots"))

    def take_snapshot(
        self,
        aggregate_id: UUID,
        version: int | None = None,
        projector_func: Any = project_aggregate,
    ) -> None:
        """Snapshot an aggregate at ``version``.

        While :meth:`save` runs, the aggregate being saved is at exactly that
        version, with every event applied and recorded: its snapshot is taken
        from it directly. The library would rebuild the same state from the
        previous snapshot and the events since (a read and a validation of up
        to ``snapshot_interval`` events inside every hundredth command).
        """
        saving = getattr(self._saving, "aggregates", None)
        aggregate = saving.get(aggregate_id) if saving else None
        snapshot_class = getattr(type(aggregate), "Snapshot", None)
        if (
            aggregate is not None
            and snapshot_class is not None
            and version is not None
            and aggregate.version == version
            and not aggregate.pending_events
            and projector_func is project_aggregate
            and self.snapshots is not None
        ):
            self.snapshots.put([snapshot_class.take(aggregate)])
            return
        super().take_snapshot(aggregate_id, version, projector_func)

    # ------------------------------------------------------------------ helpers

    def _now(self, at: datetime | None) -> datetime:
        return utc(at) if at is not None else utc(self.clock())

    def _retrying(self, what: str, command: Callable[[], T]) -> T:
        """Run ``command`` until it is not beaten by a concurrent writer."""
        attempts = self.settings.conflict_retries
        for attempt in range(attempts):
            try:
                return command()
            except RecordConflictError:
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # full jitter
        raise ConcurrencyConflictError(what, attempts)

    def _get_session(self, session_id: UUID | str) -> Session:
        sid = _as_uuid(session_id)
        try:
            try:
                session = self.repository.get(sid, projector_func=_project)
            except ErasedSnapshotError:
                # Left by an erasure that stopped before deleting its snapshots (or
                # read just before it did): derived data; drop it and replay the log.
                table = getattr(getattr(self.snapshots, "recorder", None), "events_table_name", None)
                if not table:
                    raise
                self.recorder.delete_snapshots(table, [sid])  # type: ignore[attr-defined]
                session = self.repository.get(sid, projector_func=_project)
        except AggregateNotFoundError as err:
            raise UnknownSessionError(session_id) from err
        if not isinstance(session, Session):
            raise UnknownSessionError(session_id)
        return session

    def _get_visitor(self, visitor_id: str) -> Visitor | None:
        try:
            visitor = self.repository.get(
                visitor_aggregate_id(visitor_id), projector_func=_project
            )
        except AggregateNotFoundError:
            return None
        assert isinstance(visitor, Visitor)
        return visitor

    def _open_session(
        self, session_id: UUID | str, at: datetime | None
    ) -> tuple[Session, datetime]:
        """Load a session for a command; a clock time never runs behind its log."""
        session = self._get_session(session_id)
        now = self._now(at)
        if at is None and session.status == "active":
            now = max(now, session.latest_event_at)
        return session, now

    def _caller_user(self, visitor_id: str | None, user_id: str | None) -> str | None:
        """The user a caller acts as; a visitor id given with a user id must be
        linked to that user (:class:`IdentityMismatchError` otherwise)."""
        if visitor_id is None or user_id is not None:
            if visitor_id is not None:
                visitor = self._get_visitor(visitor_id)
                if visitor is None or visitor.user_id != user_id:
                    raise IdentityMismatchError(visitor_id, user_id)  # type: ignore[arg-type]
            return user_id
        visitor = self._get_visitor(visitor_id)
        return visitor.user_id if visitor is not None else None

    def _check_owner(self, session: Session, visitor_id: str | None, user_id: str | None) -> None:
        """Refuse unless ``session`` belongs to the caller: its visitor, or the
        user that visitor is (now) linked to. Every id the caller gives must
        belong together, or nothing is read or written."""
        if visitor_id is None and user_id is None:
            return
        caller_user = self._caller_user(visitor_id, user_id)
        if visitor_id is not None and session.visitor_id == visitor_id:
            return
        if caller_user is not None:
            if session.user_id == caller_user:
                return
            owner = self._get_visitor(session.visitor_id)
            if owner is not None and owner.user_id == caller_user:
                return
        raise SessionOwnershipError(session.id, visitor_id=visitor_id, user_id=user_id)

    # ------------------------------------------------------------------ commands

    @_checked(
        visitor_id=ID, text=TEXT, session_id=_opt(SID), client_message_id=_opt(ID), channel=ID,
        context=_context, metadata=_opt(OBJ), at=_opt(TIME),
    )
    def receive(
        self,
        visitor_id: str,
        text: str,
        *,
        session_id: UUID | str | None = None,
        client_message_id: str | None = None,
        channel: str = "web",
        context: SessionContext | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Turn:
        """Record a user message; start, continue or renew the visitor's session.

        If the visitor's current session is still live, the message joins it.
        If it went idle past its timeout, it is closed with a timed-out event
        stamped at the moment it expired, and a new session starts, linked to it
        and marked as a returning visit. A retry with a ``client_message_id``
        that is already recorded appends nothing and returns the same turn
        (``turn.duplicate`` is then True). Retries are recognised within the
        visitor's current session and the one before it (a webhook's retry
        window); a redelivery after two further sessions is recorded anew.
        """
        ctx = context if isinstance(context, SessionContext) or context is None else (
            _validated(SessionContext, context)
        )
        return self._retrying(
            f"receive() for visitor {visitor_id!r}",
            lambda: self._receive_once(
                visitor_id, text, session_id, client_message_id, channel, ctx, metadata, at
            ),
        )

    def _receive_once(
        self,
        visitor_id: str,
        text: str,
        session_id: UUID | str | None,
        client_message_id: str | None,
        channel: str,
        context: SessionContext | None,
        metadata: dict[str, Any] | None,
        at: datetime | None,
    ) -> Turn:
        visitor = self._get_visitor(visitor_id)
        now = self._now(at)
        explicit: Session | None = None
        if session_id is not None:
            explicit = self._get_session(session_id)
            self._check_owner(explicit, visitor_id, None)
        current = explicit
        if (
            visitor is not None
            and visitor.current_session_id is not None
            and (explicit is None or explicit.id != visitor.current_session_id)
        ):
            current = self._get_session(visitor.current_session_id)

        if client_message_id is not None:
            for candidate in self._recent_sessions(explicit, current):
                seen = candidate.message_for(client_message_id)
                if seen is not None:
                    if seen.role != "user":
                        raise ClientMessageIdConflictError(
                            candidate.id, client_message_id, recorded_role=seen.role, role="user"
                        )
                    return Turn.of(candidate, seen, duplicate=True)

        # A live session takes the message: the one the caller named, else the visitor's.
        for live in (explicit, current):
            if live is None or live.status != "active":
                continue
            when = max(now, live.latest_event_at) if at is None else now
            if live.is_expired(when):
                live.time_out(detected_at=when)
                continue
            message = live.receive(
                text, at=when, client_message_id=client_message_id, metadata=metadata
            )
            self.save(live, *(s for s in (explicit, current) if s is not live))
            return Turn.of(live, message)

        # No live session: open one, linked to the visitor's previous session.
        if visitor is None:
            visitor = Visitor.register(visitor_id, at=now)
        previous = current if current is not None and current.visitor_id == visitor_id else None
        session = Session.start(
            session_id=uuid7(now),
            visitor_id=visitor_id,
            at=now,
            policy=AppliedPolicy.of(self.policy),
            channel=channel,
            user_id=visitor.user_id,
            context=context,
            previous=previous,
            carry_over_slots=self.policy.carry_over_slots,
        )
        message = session.receive(
            text, at=now, client_message_id=client_message_id, metadata=metadata
        )
        visitor.open_session(session.id, at=now)
        self.save(visitor, explicit, current if current is not explicit else None, session)
        return Turn.of(session, message)

    def _recent_sessions(self, *sessions: Session | None) -> Iterator[Session]:
        """Where a retried message may already sit: these sessions and their predecessors."""
        seen: set[UUID] = set()
        for session in sessions:
            if session is None or session.id in seen:
                continue
            seen.add(session.id)
            yield session
            previous = session.previous_session_id
            if previous is not None and previous not in seen:
                seen.add(previous)
                yield self._get_session(previous)

    @_checked(
        session_id=SID, text=TEXT, role=_choice("bot", "system"), client_message_id=_opt(ID),
        metadata=_opt(OBJ), at=_opt(TIME),
    )
    def reply(
        self,
        session_id: UUID | str,
        text: str,
        *,
        role: Literal["bot", "system"] = "bot",
        client_message_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Message:
        """Record the bot's (or the system's) message; idempotent per client id."""

        def once() -> Message:
            session, now = self._open_session(session_id, at)
            if client_message_id is not None:
                seen = session.message_for(client_message_id)
                if seen is not None:
                    if seen.role != role:
                        raise ClientMessageIdConflictError(
                            session.id, client_message_id, recorded_role=seen.role, role=role
                        )
                    return seen
            message = session.send(
                text, at=now, role=role, client_message_id=client_message_id, metadata=metadata
            )
            self.save(session)
            return message

        return self._retrying(f"reply() to session {session_id}", once)

    def _session_command(
        self, what: str, session_id: UUID | str, at: datetime | None, apply: Callable[[Session, datetime], None]
    ) -> SessionState:
        def once() -> SessionState:
            session, now = self._open_session(session_id, at)
            apply(session, now)
            self.save(session)
            return SessionState.of(session)

        return self._retrying(f"{what} on session {session_id}", once)

    @_checked(session_id=SID, key=ID, value=JSON, scope=_choice("session", "user"), at=_opt(TIME))
    def set_slot(
        self,
        session_id: UUID | str,
        key: str,
        value: Any,
        *,
        scope: SlotScope = "session",
        at: datetime | None = None,
    ) -> SessionState:
        """Set a slot. ``scope="user"`` marks it as a fact about the person
        (name, preferences) that cross-session memory may keep."""
        return self._session_command(
            "set_slot()", session_id, at, lambda s, now: s.set_slot(key, value, at=now, scope=scope)
        )

    @_checked(session_id=SID, key=ID, at=_opt(TIME))
    def clear_slot(self, session_id: UUID | str, key: str, *, at: datetime | None = None) -> SessionState:
        return self._session_command(
            "clear_slot()", session_id, at, lambda s, now: s.clear_slot(key, at=now)
        )

    @_checked(session_id=SID, task=ID, at=_opt(TIME))
    def start_task(self, session_id: UUID | str, task: str, *, at: datetime | None = None) -> SessionState:
        """Mark a task in progress; the session then idles on the longer task timeout."""
        return self._session_command(
            "start_task()", session_id, at, lambda s, now: s.start_task(task, at=now)
        )

    @_checked(session_id=SID, task=ID, at=_opt(TIME))
    def complete_task(self, session_id: UUID | str, task: str, *, at: datetime | None = None) -> SessionState:
        return self._session_command(
            "complete_task()", session_id, at, lambda s, now: s.complete_task(task, at=now)
        )

    @_checked(session_id=SID, reason=ID, at=_opt(TIME))
    def end_session(
        self, session_id: UUID | str, *, reason: str = "ended", at: datetime | None = None
    ) -> SessionState:
        """End a session on purpose. A session already past its timeout is
        recorded as timed out (at the moment it expired) instead."""

        def once() -> SessionState:
            session, now = self._open_session(session_id, at)
            if not session.time_out(detected_at=now):
                session.end(at=now, reason=reason)
            self.save(session)
            return SessionState.of(session)

        return self._retrying(f"end_session() on session {session_id}", once)

    @_checked(session_id=SID, now=_opt(TIME))
    def expire_if_idle(self, session_id: UUID | str, *, now: datetime | None = None) -> bool:
        """Record the timeout of one session if it is past its deadline at ``now``.

        Returns True if this call appended the timed-out event. Safe to race
        with the lazy path and other sweepers: the event is appended once.
        """

        def once() -> bool:
            session = self._get_session(session_id)
            if not session.time_out(detected_at=self._now(now)):
                return False
            self.save(session)
            return True

        return self._retrying(f"expire_if_idle() on session {session_id}", once)

    # ------------------------------------------------------------------ housekeeping

    @_checked(now=_opt(TIME), limit=_opt(COUNT), batch_size=COUNT)
    def sweep(
        self, now: datetime | None = None, *, limit: int | None = None, batch_size: int = 5000
    ) -> int:
        """Time out every session idle past its deadline at ``now``; return how many.

        Each timed-out event is stamped with the moment the session went idle,
        and is appended exactly once however many sweepers (threads, processes,
        servers) and lazy checks race. See ``docs/timeouts.md``.
        """
        from .sweeper import sweep

        return sweep(self, now, limit=limit, batch_size=batch_size).timed_out

    @_checked(older_than=DURATION, archive_dir=_path, now=_opt(TIME))
    def archive_closed_sessions(
        self, older_than: timedelta, archive_dir: str | os.PathLike[str], *, now: datetime | None = None
    ) -> ArchiveResult:
        """Archive sessions closed before ``now - older_than`` to a gzipped JSONL
        file and drop their read-model rows. The event log is not touched."""
        from .retention import archive_closed_sessions

        return archive_closed_sessions(self, older_than, archive_dir, now=now)

    @_checked(path=_path)
    def read_archive(self, path: str | os.PathLike[str]) -> list[ArchivedSession]:
        """The sessions of a retention archive file, decrypted with the keys still
        in the store (an erased visitor's sessions read as ``"[erased]"``)."""
        from .retention import read_archive

        return read_archive(self, path)

    @_checked(interval=_interval, retention=_retention, projections_interval=_opt(_interval))
    def start_background_jobs(
        self,
        interval: float = 30.0,
        *,
        retention: RetentionPolicy | None = None,
        projections_interval: float | None = 5.0,
    ) -> BackgroundJobs:
        """Run the sweep, the projections catch-up (unless ``projections_interval``
        is None) and the retention job (if given) in a background scheduler
        thread until :meth:`stop_background_jobs` or :meth:`close`."""
        from chatledger.infrastructure.scheduler import BackgroundJobs

        if self._jobs is None:
            self._jobs = BackgroundJobs(
                self,
                interval=interval,
                retention=retention,
                projections_interval=projections_interval,
            )
            self._jobs.start()
        return self._jobs

    def stop_background_jobs(self) -> None:
        jobs, self._jobs = getattr(self, "_jobs", None), None
        if jobs is not None:
            jobs.stop()

    @contextmanager
    def background_jobs(
        self,
        interval: float = 30.0,
        *,
        retention: RetentionPolicy | None = None,
        projections_interval: float | None = 5.0,
    ) -> Iterator[BackgroundJobs]:
        """``with ledger.background_jobs(): serve()``: jobs run while the block runs."""
        jobs = self.start_background_jobs(
            interval, retention=retention, projections_interval=projections_interval
        )
        try:
            yield jobs
        finally:
            self.stop_background_jobs()

    @_checked(visitor_id=ID, user_id=ID, at=_opt(TIME))
    def link_identity(self, visitor_id: str, user_id: str, *, at: datetime | None = None) -> VisitorState:
        """Link an anonymous visitor to an authenticated user (an event).

        The visitor's live session, if any, records the link too; every later
        session of the visitor carries ``user_id``. Linking again to the same
        user is a no-op; to another user, :class:`IdentityConflictError`.
        """

        def once() -> VisitorState:
            now = self._now(at)
            visitor = self._get_visitor(visitor_id) or Visitor.register(visitor_id, at=now)
            if not visitor.link_identity(user_id, at=now):
                return VisitorState.of(visitor)
            session = None
            if visitor.current_session_id is not None:
                session = self._get_session(visitor.current_session_id)
                if session.status == "active" and not session.is_expired(now):
                    session.link_identity(user_id, at=max(now, session.latest_event_at))
            self.save(visitor, session)
            return VisitorState.of(visitor)

        return self._retrying(f"link_identity() for visitor {visitor_id!r}", once)

    # ------------------------------------------------------------------ queries

    @_checked(session_id=SID, as_of=_opt(TIME), visitor_id=_opt(ID), user_id=_opt(ID))
    def session(
        self,
        session_id: UUID | str,
        *,
        as_of: datetime | None = None,
        visitor_id: str | None = None,
        user_id: str | None = None,
    ) -> SessionState:
        """The session rebuilt from its events, now or as it stood at ``as_of``.

        Pass ``visitor_id`` or ``user_id`` to read on someone's behalf: a
        session that is not theirs raises :class:`SessionOwnershipError`.
        A session idle past its deadline reads as timed out even before the
        timed-out event is recorded, so every reader agrees on when it ended.
        """
        view_at = self._now(None) if as_of is None else utc(as_of)
        session: Session | None = None
        if visitor_id is not None or user_id is not None:
            session = self._get_session(session_id)
            # Ownership is decided on the session as it is now (a later login makes
            # an anonymous session its user's), and before anything is said about
            # the session's past, so a stranger learns nothing, not even its start.
            self._check_owner(session, visitor_id, user_id)
        if as_of is not None:
            session = self._session_as_of(session_id, view_at)
        elif session is None:
            session = self._get_session(session_id)
        return _effective(SessionState.of(session), view_at)

    def _session_as_of(self, session_id: UUID | str, as_of: datetime) -> Session:
        sid = _as_uuid(session_id)
        session: Session | None = None
        for event in self.events.get(sid):
            assert isinstance(event, DomainEvent)
            if event.occurred_at > as_of:
                break
            session = event.mutate(session)  # type: ignore[attr-defined]
        if session is None:
            if self._exists(sid):
                raise InvalidCommandError(
                    f"Session {session_id} had not started by {as_of.isoformat()}."
                )
            raise UnknownSessionError(session_id)
        return session

    def _exists(self, aggregate_id: UUID) -> bool:
        return bool(list(self.events.get(aggregate_id, limit=1)))

    @_checked(session_id=SID)
    def session_events(self, session_id: UUID | str) -> list[DomainEvent]:
        """Every stored event of a session, in order (for audit and display)."""
        sid = _as_uuid(session_id)
        events = [e for e in self.events.get(sid) if isinstance(e, DomainEvent)]
        if not events or not isinstance(events[0], Session.Started):
            raise UnknownSessionError(session_id)  # a visitor's stream is no session
        return events

    # ------------------------------------------------------------------ audit

    @_checked(session_id=SID, until=_opt(TIME), version=_opt(COUNT))
    def history(
        self,
        session_id: UUID | str,
        *,
        until: datetime | None = None,
        version: int | None = None,
    ) -> Iterator[HistoryStep]:
        """Replay a session from its stored events only: ``(event, state after it)``.

        ``until`` keeps the events known by then (a ``TimedOut`` counts from when
        it was detected); ``version`` stops at that event. Never reads a
        snapshot, the cache or a read model.
        """
        return iter_history(self, session_id, until=until, version=version)

    @_checked(session_id=SID, until=TIME)
    def replay(self, session_id: UUID | str, *, until: datetime) -> SessionState:
        """The session exactly as the live API showed it at ``until``, from the log."""
        at = utc(until)
        steps = list(self.history(session_id, until=at))
        if not steps:
            raise InvalidCommandError(f"Session {session_id} had not started by {at.isoformat()}.")
        return _effective(steps[-1].state, at)

    @_checked(session_id=_opt(SID))
    def verify(self, session_id: UUID | str | None = None) -> VerificationReport:
        """Recompute the tamper-evident hash chains: the whole log, or one session's
        events (each also checked against the log chain row before it)."""
        return verify_log(self, session_id)

    @_checked(user_id=_opt(ID), visitor_id=_opt(ID), at=_opt(TIME))
    def erase(
        self,
        *,
        user_id: str | None = None,
        visitor_id: str | None = None,
        at: datetime | None = None,
    ) -> ErasureReceipt:
        """Erase a person's conversation content by destroying their keys.

        A user's erasure covers every visitor ever linked to them, with those
        visitors' sessions from before the login. Appends ``Visitor.DataErased``
        (recording the returned receipt) and destroys the keys in the same
        transaction; afterwards every personal field under those keys reads as
        erased. Ids, times, event types and counts remain. An unknown subject
        raises :class:`UnknownSubjectError` and appends nothing.
        """
        return erase_subject(self, user_id=user_id, visitor_id=visitor_id, at=at)

    @_checked(out=_writer, user_id=_opt(ID), session_id=_opt(SID))
    def export_audit(
        self, out: IO[str], *, user_id: str | None = None, session_id: UUID | str | None = None
    ) -> VerificationReport:
        """Write a self-describing JSONL bundle for auditors: a header (format and
        field docs), every event of the user (their visitors and sessions) or of
        one session with its hashes, and a final verification line."""
        return export_bundle(self, out, user_id=user_id, session_id=session_id)

    @_checked(visitor_id=ID)
    def visitor(self, visitor_id: str) -> VisitorState | None:
        """The visitor's identity link and sessions, or None if never seen."""
        visitor = self._get_visitor(visitor_id)
        return VisitorState.of(visitor) if visitor else None

    @_checked(visitor_id=ID)
    def current_session(self, visitor_id: str) -> SessionState | None:
        """The visitor's live session, or None if they have none right now."""
        visitor = self._get_visitor(visitor_id)
        if visitor is None or visitor.current_session_id is None:
            return None
        state = self.session(visitor.current_session_id)
        return state if state.status == "active" else None


def _project(aggregate: Any, events: Any) -> Any:
    """``eventsourcing.application.project_aggregate`` without its per-event
    ``assert isinstance(event, CanMutateProtocol)``: a runtime-checkable
    Protocol check costs tens of microseconds on Python 3.11, a third of the
    time of replaying a long session without a snapshot. Every event the
    mapper returns is a chatledger ``DomainEvent`` with ``mutate``.
    """
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def _effective(state: SessionState, at: datetime) -> SessionState:
    """The state as a reader at ``at`` sees it: expired reads as timed out."""
    if state.status != "active" or state.expires_at is None or at <= state.expires_at:
        return state
    reason = "idle"
    if state.expires_at < state.last_activity_at + state.idle_timeout:
        reason = "max_length"
    return state.model_copy(
        update={
            "status": "timed_out",
            "closed_at": state.expires_at,
            "close_reason": reason,
            "expires_at": None,
        }
    )


def _as_uuid(value: UUID | str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError as err:
        raise UnknownSessionError(value) from err


def _validated(model: type[SessionContext], data: dict[str, Any]) -> SessionContext:
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InvalidCommandError(f"Invalid session context: {err}") from err


__all__ = ["ChatLedger"]
