"""``ChatLedger``, the facade: each command or query checks its arguments (:mod:`.arguments`) and
calls one use case on the ledger's unit of work, built by :mod:`.bootstrap`. See docs/api.md."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import IO, Any, Literal
from uuid import UUID

from ..domain.conversation import Message, SessionContext, SlotScope
from ..domain.erasure import ErasureReceipt
from ..domain.policy import SessionPolicy
from ..domain.pydantic_aggregates import DomainEvent
from ..domain.read_views import SessionState, Turn, VisitorState
from ..infrastructure.hashchain import VerificationReport
from ..infrastructure.scheduler import BackgroundJobs
from ..projections.failures import ProjectionFailure
from ..projections.query_results import (
    Analytics,
    Engagement,
    Memory,
    Resessionized,
    TimeoutCurve,
    Transcript,
    TranscriptMessage,
)
from ..projections.status import Progress, ProjectionStatus
from . import arguments as arg
from . import audit, bootstrap, reads, retention, session_commands, subscribers, sweeper
from .arguments import checked, opt
from .clock import Clock
from .deprecation import renamed
from .erasure import erase_subject
from .receive import receive as receive_message
from .retention import ArchivedSession, ArchiveResult, RetentionPolicy
from .unit_of_work import UnitOfWork
from .webhooks import WebhookWorker


class ChatLedger(UnitOfWork):
    """Event-sourced session management for one bot: one per process, shared by its threads."""

    name = "ChatLedger"  # read models track their positions under it (also application/backups.py)

    @classmethod
    def open(
        cls, database_url: str | None = None, *, policy: SessionPolicy | None = None,
        clock: Clock | None = None, tenant: str = "default", **settings: Any,
    ) -> ChatLedger:
        """Open (and create if needed) the ledger at ``database_url`` for ``tenant``; ``settings``: Settings fields."""
        return cls(bootstrap.open_settings(database_url, **settings), policy=policy, clock=clock, tenant=tenant)

    def webhook(self, name: str, url: str, **options: Any) -> WebhookWorker:
        """A worker posting each event, in log order and at least once, to ``url``."""
        return WebhookWorker(self, name, url, **options)

    @checked(visitor_id=arg.ID, text=arg.TEXT, session_id=opt(arg.SID), channel=arg.ID,
             client_message_id=opt(arg.ID), context=arg.context_arg, metadata=opt(arg.OBJ),
             at=opt(arg.TIME))
    def receive(
        self, visitor_id: str, text: str, *, session_id: UUID | str | None = None,
        client_message_id: str | None = None, channel: str = "web",
        context: SessionContext | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None, at: datetime | None = None,
    ) -> Turn:
        """Record a user message; start, continue or renew the visitor's session (idempotent)."""
        return receive_message(self, visitor_id, text, session_id=session_id, channel=channel,
                               client_message_id=client_message_id, context=context, metadata=metadata, at=at)

    @checked(session_id=arg.SID, text=arg.TEXT, role=arg.choice("bot", "system"),
             client_message_id=opt(arg.ID), metadata=opt(arg.OBJ), at=opt(arg.TIME))
    def reply(
        self, session_id: UUID | str, text: str, *, role: Literal["bot", "system"] = "bot",
        client_message_id: str | None = None, metadata: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Message:
        """Record the bot's (or the system's) message; idempotent per client id."""
        return session_commands.reply(self, session_id, text, role=role,
                                      client_message_id=client_message_id, metadata=metadata, at=at)

    @checked(session_id=arg.SID, key=arg.ID, value=arg.JSON, scope=arg.choice("session", "user"),
             at=opt(arg.TIME))
    def set_slot(
        self, session_id: UUID | str, key: str, value: Any, *, scope: SlotScope = "session",
        at: datetime | None = None,
    ) -> SessionState:
        """Set a slot; ``scope="user"``: a fact about the person that memory may keep."""
        return session_commands.set_slot(self, session_id, key, value, scope=scope, at=at)

    @checked(session_id=arg.SID, key=arg.ID, at=opt(arg.TIME))
    def clear_slot(self, session_id: UUID | str, key: str, *, at: datetime | None = None) -> SessionState:
        """Clear a slot."""
        return session_commands.clear_slot(self, session_id, key, at=at)

    @checked(session_id=arg.SID, task=arg.ID, at=opt(arg.TIME))
    def start_task(self, session_id: UUID | str, task: str, *, at: datetime | None = None) -> SessionState:
        """Mark a task in progress; the session then idles on the longer task timeout."""
        return session_commands.start_task(self, session_id, task, at=at)

    @checked(session_id=arg.SID, task=arg.ID, at=opt(arg.TIME))
    def complete_task(self, session_id: UUID | str, task: str, *, at: datetime | None = None) -> SessionState:
        """Mark a started task done."""
        return session_commands.complete_task(self, session_id, task, at=at)

    @checked(session_id=arg.SID, reason=arg.ID, at=opt(arg.TIME))
    def end_session(
        self, session_id: UUID | str, *, reason: str = "ended", at: datetime | None = None
    ) -> SessionState:
        """End a session on purpose (one already past its timeout is recorded as timed out)."""
        return session_commands.end_session(self, session_id, reason=reason, at=at)

    @checked(session_id=arg.SID, now=opt(arg.TIME))
    def time_out_if_idle(self, session_id: UUID | str, *, now: datetime | None = None) -> bool:
        """Time out one session if it is past its deadline at ``now``; True if this call did."""
        return session_commands.time_out_if_idle(self, session_id, now=now)

    expire_if_idle = renamed(time_out_if_idle, "expire_if_idle", "0.4.0")

    @checked(visitor_id=arg.ID, user_id=arg.ID, at=opt(arg.TIME))
    def link_identity(self, visitor_id: str, user_id: str, *, at: datetime | None = None) -> VisitorState:
        """Link an anonymous visitor to an authenticated user (an event)."""
        return session_commands.link_identity(self, visitor_id, user_id, at=at)

    @checked(user_id=opt(arg.ID), visitor_id=opt(arg.ID), at=opt(arg.TIME))
    def erase(
        self, *, user_id: str | None = None, visitor_id: str | None = None, at: datetime | None = None
    ) -> ErasureReceipt:
        """Erase a person's conversation content by destroying their keys."""
        return erase_subject(self, user_id=user_id, visitor_id=visitor_id, at=at)

    @checked(session_id=arg.SID, as_of=opt(arg.TIME), visitor_id=opt(arg.ID), user_id=opt(arg.ID))
    def session(
        self, session_id: UUID | str, *, as_of: datetime | None = None,
        visitor_id: str | None = None, user_id: str | None = None,
    ) -> SessionState:
        """The session rebuilt from its events, now or as it stood at ``as_of``."""
        return reads.session(self, session_id, as_of=as_of, visitor_id=visitor_id, user_id=user_id)

    @checked(session_id=arg.SID)
    def session_events(self, session_id: UUID | str) -> list[DomainEvent]:
        """Every stored event of a session, in order (for audit and display)."""
        return reads.session_events(self, session_id)

    @checked(visitor_id=arg.ID)
    def visitor(self, visitor_id: str) -> VisitorState | None:
        """The visitor's identity link and sessions, or None if never seen."""
        return reads.visitor(self, visitor_id)

    @checked(visitor_id=arg.ID)
    def current_session(self, visitor_id: str) -> SessionState | None:
        """The visitor's live session, or None if they have none right now."""
        return reads.current_session(self, visitor_id)

    @checked(session_id=arg.SID, until=opt(arg.TIME), version=opt(arg.COUNT))
    def history(
        self, session_id: UUID | str, *, until: datetime | None = None, version: int | None = None
    ) -> Iterator[audit.HistoryStep]:
        """Replay a session from its stored events only: ``(event, state after it)``."""
        return audit.iter_history(self, session_id, until=until, version=version)

    @checked(session_id=arg.SID, until=arg.TIME)
    def replay(self, session_id: UUID | str, *, until: datetime) -> SessionState:
        """The session exactly as the live API showed it at ``until``, from the log."""
        return reads.replay(self, session_id, until=until)

    @checked(session_id=opt(arg.SID), incremental=arg.flag_arg)
    def verify(self, session_id: UUID | str | None = None, *, anchor: str | None = None, incremental: bool = False) -> VerificationReport:
        """Recompute the hash chains and seals of the log (or one session's chain); ``incremental``: trust seals verified before."""
        return audit.verify_log(self, session_id, anchor, incremental)

    def seal(self) -> int:
        """Seal the committed events after the last seal; how many it sealed."""
        return audit.seal(self)

    def anchor(self) -> str | None:
        """The newest seal as ``ROOT@POSITION``, to publish outside the database."""
        return audit.anchor(self)

    @checked(out=arg.writer_arg, user_id=opt(arg.ID), session_id=opt(arg.SID))
    def export_audit(
        self, out: IO[str], *, user_id: str | None = None, session_id: UUID | str | None = None
    ) -> VerificationReport:
        """Write a self-describing JSONL audit bundle of a user or a session to ``out``."""
        return audit.export_bundle(self, out, user_id=user_id, session_id=session_id)

    @checked(position=arg.position_arg, limit=arg.feed_limit_arg, content=arg.flag_arg, all_tenants=arg.flag_arg)
    def events_after(
        self, position: int = 0, *, limit: int = 1000, content: bool = False, all_tenants: bool = False
    ) -> list[subscribers.LogEvent]:
        """The tenant's (or all) events recorded after ``position``, in log order, at most ``limit``."""
        return subscribers.read_events(self, position, limit, content=content, tenant=self.scope(all_tenants))

    @checked(progress=arg.callback_arg)
    def catch_up(self, *, progress: Progress | None = None) -> int:
        """Bring every read model up to the head of the log; return events applied."""
        return self.projector.catch_up(progress=progress)

    def projection_status(self) -> list[ProjectionStatus]:
        """Each read model's position, the head of the log, the lag and its failures."""
        return self.projector.status()

    @checked(name=opt(arg.ID))
    def projection_failures(self, name: str | None = None) -> list[ProjectionFailure]:
        """The events read model ``name`` (or any) could not apply, in log order."""
        return self.projector.failures(name)

    @checked(session_id=opt(arg.SID), user_id=opt(arg.ID), visitor_id=opt(arg.ID),
             start=opt(arg.TIME), end=opt(arg.TIME))
    def transcript(
        self, session_id: UUID | str | None = None, *, user_id: str | None = None,
        visitor_id: str | None = None, start: datetime | None = None, end: datetime | None = None, after: int | None = None,
    ) -> Transcript:
        """Messages of a session, a user, a visitor and/or ``[start, end)``; ``after``: see :meth:`wait_for`."""
        return reads.transcript(self.waited(after), session_id, user_id=user_id, visitor_id=visitor_id, start=start, end=end)

    @checked(start=opt(arg.TIME), end=opt(arg.TIME))
    def messages(
        self, *, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[int, int, Iterator[TranscriptMessage]]:
        """Stream every message in ``[start, end)`` for exports: ``(position, head, messages)``."""
        return self.projection_reads.messages(start=start, end=end)

    @checked(start=opt(arg.TIME), end=opt(arg.TIME), as_of=opt(arg.TIME),
             engagement=arg.engagement_arg)
    def analytics(
        self, *, start: datetime | None = None, end: datetime | None = None,
        as_of: datetime | None = None, engagement: Engagement | None = None, after: int | None = None,
    ) -> Analytics:
        """Analytics of the sessions started in ``[start, end)``, as of ``as_of``; ``after``: see :meth:`wait_for`."""
        return self.waited(after).projection_reads.analytics(start=start, end=end, as_of=as_of, engagement=engagement)

    @checked(start=opt(arg.TIME), end=opt(arg.TIME), as_of=opt(arg.TIME), engagement=arg.engagement_arg)
    def analytics_by_tenant(self, *, start: datetime | None = None, end: datetime | None = None,
                            as_of: datetime | None = None, engagement: Engagement | None = None) -> dict[str, Analytics]:
        """:meth:`analytics` of every tenant, by tenant (the operator's: the default tenant's ledger)."""; self.scope(True, "analytics_by_tenant()")
        return self.projection_reads.analytics_by_tenant(start=start, end=end, as_of=as_of, engagement=engagement)

    @checked(timeout=arg.DURATION, start=opt(arg.TIME), end=opt(arg.TIME))
    def resessionize(self, timeout: timedelta, *, start: datetime | None = None, end: datetime | None = None) -> Resessionized:
        """Conversation counts had the idle timeout been ``timeout`` (read only)."""
        return self.projection_reads.resessionize(timeout, start=start, end=end)

    @checked(start=opt(arg.TIME), end=opt(arg.TIME))
    def timeout_curve(self, timeouts: Sequence[timedelta], *, start: datetime | None = None, end: datetime | None = None) -> TimeoutCurve:
        """:meth:`resessionize`'s conversation count under each of ``timeouts``, in one query (the gaps read model)."""
        return self.projection_reads.timeout_curve(timeouts, start=start, end=end)

    @checked(user_id=opt(arg.ID), visitor_id=opt(arg.ID))
    def memory(self, *, user_id: str | None = None, visitor_id: str | None = None, after: int | None = None) -> Memory:
        """What the bot remembers about a user, or a still-anonymous visitor; ``after``: see :meth:`wait_for`."""
        return self.waited(after).projection_reads.memory(user_id=user_id, visitor_id=visitor_id)

    @checked(now=opt(arg.TIME), limit=opt(arg.COUNT), batch_size=arg.COUNT, all_tenants=arg.flag_arg)
    def sweep(self, now: datetime | None = None, *, limit: int | None = None, batch_size: int = 5000, all_tenants: bool = False) -> int:
        """Time out every session of the tenant (or all) idle past its deadline at ``now``; how many."""
        return sweeper.sweep(self, now, limit=limit, batch_size=batch_size, tenant=self.scope(all_tenants)).timed_out

    @checked(now=opt(arg.TIME), all_tenants=arg.flag_arg)
    def sweep_backlog(self, now: datetime | None = None, *, all_tenants: bool = False) -> int:
        """Sessions of the tenant (or all) past their deadline at ``now``, not yet timed out."""
        return sweeper.backlog(self, now, tenant=self.scope(all_tenants))

    @checked(older_than=arg.DURATION, archive_dir=arg.path_arg, now=opt(arg.TIME), all_tenants=arg.flag_arg)
    def archive_closed_sessions(
        self, older_than: timedelta, archive_dir: str | os.PathLike[str], *, now: datetime | None = None,
        all_tenants: bool = False,
    ) -> ArchiveResult:
        """Archive the tenant's (or all) sessions closed before ``now - older_than``; drop their rows."""
        return retention.archive_closed_sessions(self, older_than, archive_dir, now=now, tenant=self.scope(all_tenants))

    @checked(path=arg.path_arg, all_tenants=arg.flag_arg)
    def read_archive(self, path: str | os.PathLike[str], *, all_tenants: bool = False) -> list[ArchivedSession]:
        """The tenant's (or all) sessions of a retention archive file, decrypted with the stored keys."""
        return retention.read_archive(self, path, all_tenants=self.scope(all_tenants) is None)

    @checked(interval=arg.interval_arg, retention=arg.retention_arg, projections_interval=opt(arg.interval_arg))
    def start_background_jobs(
        self, interval: float = 30.0, *, retention: RetentionPolicy | None = None,
        projections_interval: float | None = 5.0,
    ) -> BackgroundJobs:
        """Run the sweep, catch-up and retention jobs in a background thread until stopped."""
        return bootstrap.start_jobs(self, interval, retention, projections_interval)

    def stop_background_jobs(self) -> None:
        """Stop the background jobs, if started (:meth:`close` does too)."""
        bootstrap.stop_jobs(self)

    @checked(interval=arg.interval_arg, retention=arg.retention_arg, projections_interval=opt(arg.interval_arg))
    def background_jobs(
        self, interval: float = 30.0, *, retention: RetentionPolicy | None = None,
        projections_interval: float | None = 5.0,
    ) -> AbstractContextManager[BackgroundJobs]:
        """``with ledger.background_jobs(): serve()``: jobs run while the block runs."""
        return bootstrap.jobs_running(self, interval, retention, projections_interval)


__all__ = ["ChatLedger"]
