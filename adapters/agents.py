"""``ChatLedgerSession``: the OpenAI Agents SDK ``Session`` protocol on chatledger.

    >>> from agents import Agent, Runner
    >>> from chatledger.aio import AsyncChatLedger
    >>> from chatledger.adapters.agents import ChatLedgerSession
    >>> ledger = await AsyncChatLedger.open("sqlite:///chat.db")  # doctest: +SKIP
    >>> await Runner.run(agent, "hi", session=ChatLedgerSession("conv-1", ledger))  # doctest: +SKIP

The SDK's ``session_id`` names a chatledger visitor (``agents:<session_id>``); its items are
the messages of that visitor's sessions, each item stored whole in the message's versioned
payload (:mod:`.items`), so transcripts, idle timeouts, identity linking, audit and erasure
apply. A ``user`` item is received (it may start a new chatledger session after the idle
timeout: the conversation goes on across it, and the new session is marked returning); every
other item is the bot's reply. ``pop_item`` and ``clear_session`` are events too: a ``system``
message retracting the item, and the session ended with reason ``agents.cleared``. The live
view leaves them out; the audited log keeps everything until erased.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, cast

from agents.items import TResponseInputItem
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)

from ..application.aio import AsyncChatLedger
from ..domain.conversation import Message
from ..domain.errors import SessionClosedError
from ..domain.read_views import SessionState
from .items import payload, read_payload, render

CLEARED = "agents.cleared"
"""The close reason of a session ended by ``clear_session``."""

_locks: weakref.WeakKeyDictionary[
    AsyncChatLedger, dict[tuple[str, asyncio.AbstractEventLoop], asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _lock(ledger: AsyncChatLedger, visitor_id: str) -> asyncio.Lock:
    """One lock per conversation, ledger and event loop: within a loop, a batch of items lands
    in order and unmixed. Writers on other loops or in other processes are serialised by the
    ledger itself (no event is lost; their batches may interleave)."""
    key = (visitor_id, asyncio.get_running_loop())
    return _locks.setdefault(ledger, {}).setdefault(key, asyncio.Lock())


def _text_of(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("text")]
        content = " ".join(str(p) for p in parts) if parts else None
    return render(content if content else item, fallback=str(item.get("type", "item")))


class ChatLedgerSession:
    """An Agents SDK session whose history is a chatledger visitor's conversation."""

    def __init__(
        self,
        session_id: str,
        ledger: AsyncChatLedger,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        namespace: str = "agents",
        channel: str = "agents",
    ) -> None:
        self.session_id = session_id
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self.ledger = ledger
        self.visitor_id = f"{namespace}:{session_id}"
        self.channel = channel
        self._home: asyncio.AbstractEventLoop | None = None

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """A ledger call: awaited on the loop this session first ran on; from another event
        loop (a thread running its own loop), in a plain worker thread on the synchronous
        ledger, since the async ledger's worker limits belong to its first loop."""
        loop = asyncio.get_running_loop()
        if self._home is None:
            self._home = loop
        if loop is self._home:
            return await getattr(self.ledger, name)(*args, **kwargs)
        return await asyncio.to_thread(getattr(self.ledger.sync, name), *args, **kwargs)

    def close(self) -> None:
        """Nothing to release: the ledger belongs to the caller (the SDK's sessions have it)."""

    # ------------------------------------------------------------------ reading

    async def _sessions(self) -> list[SessionState]:
        """The visitor's sessions since the last clear, oldest first."""
        visitor = await self._call("visitor", self.visitor_id)
        if visitor is None:
            return []
        found: list[SessionState] = []
        for sid in reversed(visitor.session_ids):
            state = await self._call("session", sid)
            if state.close_reason == CLEARED:
                break
            found.append(state)
        found.reverse()
        return found

    async def _live_items(self) -> list[tuple[SessionState, Message, dict[str, Any]]]:
        entries: list[tuple[SessionState, Message, dict[str, Any]]] = []
        retracted: set[tuple[str, int]] = set()
        for state in await self._sessions():
            for message in state.messages:
                body = read_payload(message)
                if body is None:
                    continue
                if body["kind"] == "agents.pop":
                    retracted.add((str(body["session"]), int(body["position"])))
                elif body["kind"] == "agents.item":
                    entries.append((state, message, body))
        return [e for e in entries if (str(e[0].session_id), e[1].position) not in retracted]

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The conversation's items, oldest first; the latest ``limit`` if given."""
        limit = resolve_session_limit(limit, self.session_settings)
        items = [cast(TResponseInputItem, body["item"]) for _, _, body in await self._live_items()]
        if limit is not None:
            return items[-limit:] if limit > 0 else []
        return items

    # ------------------------------------------------------------------ writing

    async def _live_session(self) -> SessionState | None:
        state: SessionState | None = await self._call("current_session", self.visitor_id)
        return state

    async def _append(self, item: dict[str, Any], live: SessionState | None) -> SessionState | None:
        text, meta = _text_of(item), payload("agents.item", item=item)
        if live is not None and item.get("role") != "user":
            role = "system" if item.get("role") in ("system", "developer") else "bot"
            try:
                await self._call("reply", live.session_id, text, role=role, metadata=meta)
                return live
            except SessionClosedError:
                pass  # timed out meanwhile: the item opens the next session
        turn = await self._call(
            "receive", self.visitor_id, text, channel=self.channel, metadata=meta
        )
        return cast(SessionState, await self._call("session", turn.session_id))

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append the items in order (each one a chatledger command)."""
        if not items:
            return
        async with _lock(self.ledger, self.visitor_id):
            live = await self._live_session()
            for item in items:
                live = await self._append(dict(cast(dict[str, Any], item)), live)

    async def _mark(self, text: str, meta: dict[str, Any]) -> SessionState:
        """Record an operation as a system message of the live session (opening one if none)."""
        live = await self._live_session()
        if live is not None:
            try:
                await self._call("reply", live.session_id, text, role="system", metadata=meta)
                return live
            except SessionClosedError:
                pass
        turn = await self._call(
            "receive", self.visitor_id, text, channel=self.channel, metadata=meta
        )
        return cast(SessionState, await self._call("session", turn.session_id))

    async def pop_item(self) -> TResponseInputItem | None:
        """Retract the newest item (an event) and return it; None if there is none."""
        async with _lock(self.ledger, self.visitor_id):
            items = await self._live_items()
            if not items:
                return None
            state, message, body = items[-1]
            meta = payload("agents.pop", session=str(state.session_id), position=message.position)
            await self._mark("(item retracted)", meta)
            return cast(TResponseInputItem, body["item"])

    async def clear_session(self) -> None:
        """Retract every item (the session ends with reason ``agents.cleared``)."""
        async with _lock(self.ledger, self.visitor_id):
            if not await self._live_items():
                return
            state = await self._mark("(conversation cleared)", payload("agents.clear"))
            await self._call("end_session", state.session_id, reason=CLEARED)


__all__ = ["CLEARED", "ChatLedgerSession"]
