"""``ChatLedgerSessionService``: Google ADK's ``BaseSessionService`` on chatledger.

    >>> from google.adk.runners import Runner
    >>> from chatledger.aio import AsyncChatLedger
    >>> from chatledger.adapters.adk import ChatLedgerSessionService
    >>> ledger = await AsyncChatLedger.open("sqlite:///chat.db")  # doctest: +SKIP
    >>> runner = Runner(agent=agent, app_name="shop",  # doctest: +SKIP
    ...                 session_service=ChatLedgerSessionService(ledger))

An ADK app is a chatledger tenant. An ADK session (app, user, session id) is a chatledger
visitor of that tenant, linked to the ADK user (so ``erase(user_id=...)`` and identity
linking reach it); its ADK events are that visitor's messages, each event stored whole as JSON
in the message's versioned payload (:mod:`.items`), so an event read back equals the one
appended. A ``user`` event is received (after the policy's idle gap it opens a new, linked
chatledger session: the ADK session goes on across it, and the invocation sees
``temp:chatledger.new_session``); every other event is the bot's reply. User state and the
user's session index live on a visitor of their own (``adk-user:<user>``), app state and the
app's user index on another (``adk-app``). Deleting a session is an event too (a marker, then
the chatledger session ends with reason ``adk.deleted``): the ADK view forgets it, the audited
log keeps it until erased. The full mapping and its limits: docs/adapters.md.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.errors import StaleSessionError
from google.adk.events.event import Event
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session
from google.adk.sessions.state import State

from ..application.aio import AsyncChatLedger
from ..domain.errors import ClientMessageIdConflictError, SessionClosedError
from ..domain.read_views import SessionState
from .items import payload, read_payload, render

DELETED = "adk.deleted"
"""The close reason of a chatledger session ended by ``delete_session``."""
NEW_SESSION = State.TEMP_PREFIX + "chatledger.new_session"
"""Set (temp state, not stored) when a user event opened a new chatledger session."""
APP_VISITOR = "adk-app"


def session_visitor(user_id: str, session_id: str) -> str:
    """The chatledger visitor of one ADK session (length-prefixed: unambiguous)."""
    return f"adk:{len(user_id)}:{user_id}:{session_id}"


def user_visitor(user_id: str) -> str:
    return f"adk-user:{user_id}"


def _jsonable(value: Any) -> Any:
    """``value`` as JSON (what the JSON encoder rejects is kept as its ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _split(delta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """App (unprefixed), user (unprefixed) and session parts of a state delta; temp dropped."""
    app: dict[str, Any] = {}
    user: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in delta.items():
        if key.startswith(State.APP_PREFIX):
            app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            own[key] = value
    return app, user, own


@dataclass
class _Stored:
    """One ADK session as its visitor's log tells it."""

    created: float
    state: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    updated: float = 0.0
    count: int = 0
    last_id: str = "created"

    @property
    def marker(self) -> str:
        """The stored revision: how many events, and the last one's id."""
        return f"{self.count}:{self.last_id}"


_locks: weakref.WeakKeyDictionary[
    AsyncChatLedger, dict[tuple[str, str, asyncio.AbstractEventLoop], asyncio.Lock]
] = weakref.WeakKeyDictionary()


class ChatLedgerSessionService(BaseSessionService):
    """ADK sessions, events and app/user/session state on a chatledger store."""

    def __init__(
        self, ledger: AsyncChatLedger, *, channel: str = "adk", tenant_prefix: str = ""
    ) -> None:
        """``tenant_prefix``: the tenant of app ``a`` is ``tenant_prefix + a`` (several ADK
        deployments, e.g. staging and production, in one store)."""
        self.ledger = ledger
        self.channel = channel
        self.tenant_prefix = tenant_prefix
        self._tenants: dict[str, AsyncChatLedger] = {}

    # ------------------------------------------------------------------ plumbing

    async def _tenant(self, app_name: str) -> AsyncChatLedger:
        found = self._tenants.get(app_name)
        if found is None:
            found = await self.ledger.tenant(self.tenant_prefix + app_name)
            self._tenants[app_name] = found
        return found

    def _lock(self, app_name: str, visitor_id: str) -> asyncio.Lock:
        """One lock per ADK session, ledger and event loop: check-then-append is atomic in a
        loop. Writers in other processes are serialised by the ledger (nothing is lost), and a
        stale one is caught by the client message id of its event's sequence number."""
        key = (app_name, visitor_id, asyncio.get_running_loop())
        return _locks.setdefault(self.ledger, {}).setdefault(key, asyncio.Lock())

    async def _record(
        self, led: AsyncChatLedger, visitor_id: str, text: str, meta: dict[str, Any], *,
        as_user: bool = False, client_id: str | None = None,
    ) -> tuple[Any, bool]:
        """Append one message to ``visitor_id``'s conversation: the user's (``receive``, which
        may open a new session) or else a reply to the live session (opening one through
        ``receive`` if none is live). Returns the recorded message and whether it opened a new
        chatledger session after an earlier one."""
        if not as_user:
            live: SessionState | None = await led.current_session(visitor_id)
            if live is not None:
                try:
                    message = await led.reply(
                        live.session_id, text, metadata=meta, client_message_id=client_id
                    )
                    return message, False
                except SessionClosedError:
                    pass  # timed out meanwhile: the event opens the next session
        turn = await led.receive(
            visitor_id, text, channel=self.channel, metadata=meta, client_message_id=client_id
        )
        return turn.message, bool(turn.is_new_session and turn.previous_session_id is not None)

    async def _payloads(self, led: AsyncChatLedger, visitor_id: str) -> list[dict[str, Any]]:
        """The framework payloads of ``visitor_id``'s messages, oldest first."""
        visitor = await led.visitor(visitor_id)
        if visitor is None:
            return []
        found: list[dict[str, Any]] = []
        for sid in visitor.session_ids:
            state: SessionState = await led.session(sid)
            for message in state.messages:
                body = read_payload(message)
                if body is not None:
                    found.append(body)
        return found

    async def _scoped_state(self, led: AsyncChatLedger, visitor_id: str) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for body in await self._payloads(led, visitor_id):
            if body["kind"] == "adk.state":
                state.update(body["delta"])
        return state

    async def _load(
        self, led: AsyncChatLedger, user_id: str, session_id: str, *, parse: bool = True
    ) -> _Stored | None:
        """The ADK session since its last creation, or None if it does not exist now; without
        ``parse``, its revision and state only (the events are not rebuilt)."""
        stored: _Stored | None = None
        for body in await self._payloads(led, session_visitor(user_id, session_id)):
            kind = body["kind"]
            if kind == "adk.create":
                stored = _Stored(body["time"], dict(body["state"]), updated=body["time"])
            elif kind == "adk.delete":
                stored = None
            elif kind == "adk.event" and stored is not None:
                raw = body["event"]
                stored.count += 1
                stored.last_id = str(raw.get("id", ""))
                stored.updated = float(raw.get("timestamp", stored.updated))
                if parse:
                    stored.events.append(Event.model_validate(raw))
                delta = (raw.get("actions") or {}).get("state_delta") or {}
                stored.state.update(_split(delta)[2])
        return stored

    async def _merged(
        self, led: AsyncChatLedger, app_name: str, user_id: str, session_id: str,
        stored: _Stored, events: list[Event],
    ) -> Session:
        state = dict(stored.state)
        for key, value in (await self._scoped_state(led, APP_VISITOR)).items():
            state[State.APP_PREFIX + key] = value
        for key, value in (await self._scoped_state(led, user_visitor(user_id))).items():
            state[State.USER_PREFIX + key] = value
        session = Session(
            id=session_id, app_name=app_name, user_id=user_id, state=state, events=events,
            last_update_time=stored.updated,
        )
        session._storage_update_marker = stored.marker
        return session

    async def _save_scoped(
        self, led: AsyncChatLedger, app: dict[str, Any], user: dict[str, Any], user_id: str
    ) -> None:
        if app:
            await self._record(led, APP_VISITOR, "(ADK app state)", payload("adk.state", delta=app))
        if user:
            await self._record(
                led, user_visitor(user_id), "(ADK user state)", payload("adk.state", delta=user)
            )

    # ------------------------------------------------------------------ the contract

    async def create_session(
        self, *, app_name: str, user_id: str, state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        session_id = (session_id.strip() if session_id else None) or uuid.uuid4().hex
        led = await self._tenant(app_name)
        visitor_id = session_visitor(user_id, session_id)
        app, user, own = _split(_jsonable(state or {}))
        async with self._lock(app_name, visitor_id):
            if await self._load(led, user_id, session_id, parse=False) is not None:
                raise AlreadyExistsError(f"Session with id {session_id} already exists.")
            now = time.time()
            body = payload("adk.create", session_id=session_id, user_id=user_id, state=own, time=now)
            await self._record(led, visitor_id, "(ADK session created)", body, as_user=True)
            await led.link_identity(visitor_id, user_id)
            users = user_visitor(user_id)
            first = await led.visitor(users) is None
            if first:
                await self._record(
                    led, APP_VISITOR, "(ADK user)", payload("adk.user", user_id=user_id)
                )
            await self._record(
                led, users, "(ADK session listed)", payload("adk.index", op="create", session_id=session_id)
            )
            if first:  # the user's state is theirs: erasing the user erases it
                await led.link_identity(users, user_id)
            await self._save_scoped(led, app, user, user_id)
        return await self._merged(led, app_name, user_id, session_id, _Stored(now, own, updated=now), [])

    async def get_session(
        self, *, app_name: str, user_id: str, session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        session_id = session_id.strip() if session_id else session_id
        led = await self._tenant(app_name)
        stored = await self._load(led, user_id, session_id)
        if stored is None:
            return None
        events = stored.events
        if config is not None:
            if config.num_recent_events is not None:
                events = events[-config.num_recent_events:] if config.num_recent_events else []
            if config.after_timestamp is not None:
                after = config.after_timestamp
                events = [e for e in events if e.timestamp >= after]
        return await self._merged(led, app_name, user_id, session_id, stored, list(events))

    async def _user_sessions(self, led: AsyncChatLedger, user_id: str) -> list[str]:
        listed: dict[str, None] = {}
        for body in await self._payloads(led, user_visitor(user_id)):
            if body["kind"] == "adk.index":
                if body["op"] == "create":
                    listed[body["session_id"]] = None
                else:
                    listed.pop(body["session_id"], None)
        return list(listed)

    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        led = await self._tenant(app_name)
        if user_id is None:
            users = [
                str(b["user_id"]) for b in await self._payloads(led, APP_VISITOR)
                if b["kind"] == "adk.user"
            ]
        else:
            users = [user_id]
        sessions: list[Session] = []
        for uid in users:
            for sid in await self._user_sessions(led, uid):
                stored = await self._load(led, uid, sid)
                if stored is not None:
                    sessions.append(await self._merged(led, app_name, uid, sid, stored, []))
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        session_id = session_id.strip() if session_id else session_id
        led = await self._tenant(app_name)
        visitor_id = session_visitor(user_id, session_id)
        async with self._lock(app_name, visitor_id):
            if await self._load(led, user_id, session_id, parse=False) is None:
                return
            await self._record(
                led, visitor_id, "(ADK session deleted)", payload("adk.delete", session_id=session_id)
            )
            live = await led.current_session(visitor_id)
            if live is not None:
                await led.end_session(live.session_id, reason=DELETED)
            await self._record(
                led, user_visitor(user_id), "(ADK session unlisted)",
                payload("adk.index", op="delete", session_id=session_id),
            )

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        led = await self._tenant(app_name)
        return await self._scoped_state(led, user_visitor(user_id))

    async def append_event(self, session: Session, event: Event) -> Event:
        if event.partial:
            return event
        led = await self._tenant(session.app_name)
        visitor_id = session_visitor(session.user_id, session.id)
        async with self._lock(session.app_name, visitor_id):
            stored = await self._load(led, session.user_id, session.id, parse=False)
            if stored is None:
                raise SessionNotFoundError(f"Session {session.id} not found.")
            marker = session._storage_update_marker
            if marker is not None and marker != stored.marker:
                raise StaleSessionError(
                    f"Session {session.id} was modified in storage after it was read "
                    f"(stored revision {stored.marker}, the caller's {marker}); "
                    "get the session again and retry."
                )
            self._apply_temp_state(session, event)
            event = self._trim_temp_delta_state(event)
            if event.actions and event.actions.state_delta:
                event.actions.state_delta = _jsonable(event.actions.state_delta)
            body = payload("adk.event", event=event.model_dump(exclude_none=True, mode="json"))
            text = render(_text_of(event), fallback=f"({event.author})")
            try:
                message, renewed = await self._record(
                    led, visitor_id, text, body, as_user=event.author == "user",
                    client_id=f"adk:{stored.created!r}:{stored.count + 1}",  # per incarnation
                )
            except ClientMessageIdConflictError as taken:  # another writer's, of the other role
                raise StaleSessionError(
                    f"Session {session.id} was modified in storage by another writer; "
                    "get the session again and retry."
                ) from taken
            if read_payload(message) != body["fw"]:
                raise StaleSessionError(
                    f"Session {session.id} was modified in storage by another writer; "
                    "get the session again and retry."
                )
            if event.actions and event.actions.state_delta:
                app, user, _ = _split(event.actions.state_delta)
                await self._save_scoped(led, app, user, session.user_id)
            self._commit_event_to_session(session, event)
            if renewed:
                session.state[NEW_SESSION] = True
            session.last_update_time = event.timestamp
            stored.count += 1
            stored.last_id = event.id
            session._storage_update_marker = stored.marker
        return event


def _text_of(event: Event) -> Any:
    """A readable rendering of ``event`` for the transcript (the event itself is the payload)."""
    content = event.content
    if content is not None and content.parts:
        texts = [p.text for p in content.parts if p.text]
        if texts:
            return " ".join(texts)
        return [cast(Any, p).model_dump(exclude_none=True, mode="json") for p in content.parts]
    return event.model_dump(exclude_none=True, mode="json", include={"author", "actions"})


__all__ = ["DELETED", "NEW_SESSION", "ChatLedgerSessionService"]
