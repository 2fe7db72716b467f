"""``ChatLedger``: the application a chatbot backend embeds, a thin facade.

Each public command or query checks its arguments (:mod:`.arguments`) and hands over to a use
case (:mod:`.receive`, :mod:`.session_commands`, :mod:`.reads`, :mod:`.audit`, :mod:`.erasure`)
on the ledger's unit of work (:mod:`.unit_of_work`: one atomic ``save`` per command, re-run on a
lost race), which :mod:`.bootstrap` builds from the settings. The facade's read-model queries
are in :mod:`.read_model_queries`, its sweep, retention and background jobs in
:mod:`.housekeeping`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from datetime import datetime
from typing import IO, Any, Literal
from uuid import UUID

from ..domain.conversation import Message, SessionContext, SlotScope
from ..domain.erasure import ErasureReceipt
from ..domain.pydantic_aggregates import DomainEvent
from ..domain.policy import SessionPolicy
from ..domain.read_views import SessionState, Turn, VisitorState
from ..infrastructure.hashchain import VerificationReport
from . import bootstrap, reads, session_commands
from .api_keys import ApiKeys
from .arguments import (
    COUNT,
    ID,
    JSON,
    OBJ,
    SID,
    TEXT,
    TIME,
    checked,
    choice,
    context_arg,
    opt,
    writer_arg,
)
from .audit import HistoryStep, export_bundle, iter_history, verify_log
from .clock import Clock
from .erasure import erase_subject
from .housekeeping import Housekeeping
from .read_model_queries import ReadModelQueries
from .receive import receive as receive_message
from .webhooks import WebhookWorker


class ChatLedger(Housekeeping, ReadModelQueries):
    """Event-sourced session management for one bot.

    Open it with :meth:`open`; keep one instance per process (it owns the
    connection pool) and share it between threads.
    """

    name = "ChatLedger"  # read models track their positions under it (also application/backups.py)

    @classmethod
    def open(
        cls, database_url: str | None = None, *, policy: SessionPolicy | None = None,
        clock: Clock | None = None, **settings: Any,
    ) -> ChatLedger:
        """Open (and create if needed) the ledger at ``database_url``.

        Without a URL, ``CHATLEDGER_DATABASE_URL`` or ``sqlite:///chatledger.db``.
        Extra keyword arguments are :class:`Settings` fields.
        """
        return cls(bootstrap.open_settings(database_url, **settings), policy=policy, clock=clock)

    @cached_property
    def api_keys(self) -> ApiKeys:
        """The HTTP service's API keys, stored hashed in this ledger's database."""
        return ApiKeys(self.projector.engine, self.clock)

    def webhook(self, name: str, url: str, **options: Any) -> WebhookWorker:
        """A delivery worker that posts each event, in log order and at least
        once, to ``url``; its position is stored under ``name``. Options:
        see :class:`~chatledger.application.webhooks.WebhookWorker`."""
        return WebhookWorker(self, name, url, **options)

    # ------------------------------------------------------------------ commands

    @checked(visitor_id=ID, text=TEXT, session_id=opt(SID), client_message_id=opt(ID), channel=ID,
             context=context_arg, metadata=opt(OBJ), at=opt(TIME))
    def receive(
        self, visitor_id: str, text: str, *, session_id: UUID | str | None = None,
        client_message_id: str | None = None, channel: str = "web",
        context: SessionContext | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None, at: datetime | None = None,
    ) -> Turn:
        """Record a user message; start, continue or renew the visitor's session.

        If the visitor's current session is still live, the message joins it.
        If it went idle past its timeout, it is closed with a timed-out event
        stamped at its deadline, and a new session starts, linked to it
        and marked as a returning visit. A retry with a ``client_message_id``
        that is already recorded appends nothing and returns the same turn
        (``turn.duplicate`` is then True). Retries are recognised within the
        visitor's current session and the one before it (a webhook's retry
        window); a redelivery after two further sessions is recorded anew.
        """
        return receive_message(
            self, visitor_id, text, session_id=session_id, client_message_id=client_message_id,
            channel=channel, context=context, metadata=metadata, at=at,
        )

    @checked(session_id=SID, text=TEXT, role=choice("bot", "system"), client_message_id=opt(ID),
             metadata=opt(OBJ), at=opt(TIME))
    def reply(
        self, session_id: UUID | str, text: str, *, role: Literal["bot", "system"] = "bot",
        client_message_id: str | None = None, metadata: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Message:
        """Record the bot's (or the system's) message; idempotent per client id."""
        return session_commands.reply(
            self, session_id, text, role=role, client_message_id=client_message_id, metadata=metadata, at=at
        )

    @checked(session_id=SID, key=ID, value=JSON, scope=choice("session", "user"), at=opt(TIME))
    def set_slot(
        self, session_id: UUID | str, key: str, value: Any, *, scope: SlotScope = "session",
        at: datetime | None = None,
    ) -> SessionState:
        """Set a slot. ``scope="user"`` marks it as a fact about the person
        (name, preferences) that cross-session memory may keep."""
        apply = lambda s, now: s.set_slot(key, value, at=now, scope=scope)
        return session_commands.session_command(self, "set_slot()", session_id, at, apply)

    @checked(session_id=SID, key=ID, at=opt(TIME))
    def clear_slot(self, session_id: UUID | str, key: str, *, at: datetime | None = None) -> SessionState:
        apply = lambda s, now: s.clear_slot(key, at=now)
        return session_commands.session_command(self, "clear_slot()", session_id, at, apply)

    @checked(session_id=SID, task=ID, at=opt(TIME))
    def start_task(self, session_id: UUID | str, task: str, *, at: datetime | None = None) -> SessionState:
        """Mark a task in progress; the session then idles on the longer task timeout."""
        apply = lambda s, now: s.start_task(task, at=now)
        return session_commands.session_command(self, "start_task()", session_id, at, apply)

    @checked(session_id=SID, task=ID, at=opt(TIME))
    def complete_task(self, session_id: UUID | str, task: str, *, at: datetime | None = None) -> SessionState:
        apply = lambda s, now: s.complete_task(task, at=now)
        return session_commands.session_command(self, "complete_task()", session_id, at, apply)

    @checked(session_id=SID, reason=ID, at=opt(TIME))
    def end_session(
        self, session_id: UUID | str, *, reason: str = "ended", at: datetime | None = None
    ) -> SessionState:
        """End a session on purpose. A session already past its timeout is
        recorded as timed out (at its deadline) instead."""
        return session_commands.end_session(self, session_id, reason=reason, at=at)

    @checked(session_id=SID, now=opt(TIME))
    def expire_if_idle(self, session_id: UUID | str, *, now: datetime | None = None) -> bool:
        """Record the timeout of one session if it is past its deadline at ``now``.

        Returns True if this call appended the timed-out event. Safe to race
        with the lazy path and other sweepers: the event is appended once.
        """
        return session_commands.time_out_if_idle(self, session_id, now=now)

    @checked(visitor_id=ID, user_id=ID, at=opt(TIME))
    def link_identity(self, visitor_id: str, user_id: str, *, at: datetime | None = None) -> VisitorState:
        """Link an anonymous visitor to an authenticated user (an event).

        The visitor's live session, if any, records the link too; every later
        session of the visitor carries ``user_id``. Linking again to the same
        user is a no-op; to another user, :class:`IdentityConflictError`.
        """
        return session_commands.link_identity(self, visitor_id, user_id, at=at)

    # ------------------------------------------------------------------ queries

    @checked(session_id=SID, as_of=opt(TIME), visitor_id=opt(ID), user_id=opt(ID))
    def session(
        self, session_id: UUID | str, *, as_of: datetime | None = None,
        visitor_id: str | None = None, user_id: str | None = None,
    ) -> SessionState:
        """The session rebuilt from its events, now or as it stood at ``as_of``.

        Pass ``visitor_id`` or ``user_id`` to read on someone's behalf: a
        session that is not theirs raises :class:`SessionOwnershipError`.
        A session idle past its deadline reads as timed out even before the
        timed-out event is recorded, so every reader agrees on when it ended.
        """
        return reads.session(self, session_id, as_of=as_of, visitor_id=visitor_id, user_id=user_id)

    @checked(session_id=SID)
    def session_events(self, session_id: UUID | str) -> list[DomainEvent]:
        """Every stored event of a session, in order (for audit and display)."""
        return reads.session_events(self, session_id)

    @checked(visitor_id=ID)
    def visitor(self, visitor_id: str) -> VisitorState | None:
        """The visitor's identity link and sessions, or None if never seen."""
        return reads.visitor(self, visitor_id)

    @checked(visitor_id=ID)
    def current_session(self, visitor_id: str) -> SessionState | None:
        """The visitor's live session, or None if they have none right now."""
        return reads.current_session(self, visitor_id)

    # ------------------------------------------------------------------ audit

    @checked(session_id=SID, until=opt(TIME), version=opt(COUNT))
    def history(
        self, session_id: UUID | str, *, until: datetime | None = None, version: int | None = None
    ) -> Iterator[HistoryStep]:
        """Replay a session from its stored events only: ``(event, state after it)``.

        ``until`` keeps the events known by then (a ``TimedOut`` counts from when
        it was detected); ``version`` stops at that event. Never reads a
        snapshot, the cache or a read model.
        """
        return iter_history(self, session_id, until=until, version=version)

    @checked(session_id=SID, until=TIME)
    def replay(self, session_id: UUID | str, *, until: datetime) -> SessionState:
        """The session exactly as the live API showed it at ``until``, from the log."""
        return reads.replay(self, session_id, until=until)

    @checked(session_id=opt(SID))
    def verify(self, session_id: UUID | str | None = None, *, anchor: str | None = None) -> VerificationReport:
        """Recompute the tamper-evident hash chains: the whole log (every
        aggregate's chain and every seal, and the anchor ``ROOT@POSITION`` if
        given), or one session's chain. The report names the sealed range and
        the unsealed tail."""
        return verify_log(self, session_id, anchor)

    def seal(self) -> int:
        """Seal the committed events after the last seal (the worker does this on
        a schedule, and each process every ``seal_every`` events); how many it sealed."""
        return self.recorder.seal()  # type: ignore[attr-defined, no-any-return]

    def anchor(self) -> str | None:
        """The newest seal as ``ROOT@POSITION``, to publish outside the database
        (``verify(anchor=...)`` detects any change or truncation before it)."""
        return self.recorder.newest_anchor()  # type: ignore[attr-defined, no-any-return]

    @checked(user_id=opt(ID), visitor_id=opt(ID), at=opt(TIME))
    def erase(
        self, *, user_id: str | None = None, visitor_id: str | None = None, at: datetime | None = None
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

    @checked(out=writer_arg, user_id=opt(ID), session_id=opt(SID))
    def export_audit(
        self, out: IO[str], *, user_id: str | None = None, session_id: UUID | str | None = None
    ) -> VerificationReport:
        """Write a self-describing JSONL bundle for auditors: a header (format and
        field docs), every event of the user (their visitors and sessions) or of
        one session with its hashes, and a final verification line."""
        return export_bundle(self, out, user_id=user_id, session_id=session_id)


__all__ = ["ChatLedger"]
