"""The bot's endpoints (scope ``bot``): messages, replies, slots, tasks, ending, identity, and
the sessions and visitors they make. Each is one awaited ledger call; client message ids make
``receive`` and ``reply`` idempotent (a retried webhook appends nothing)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ... import Message, SessionState, Turn, VisitorState
from .answers import json_of
from .auth import ledger_of, require
from .bodies import Ending, IdentityLink, IncomingMessage, NewTask, Reply, SlotValue

router = APIRouter(prefix="/v1", tags=["conversations"], dependencies=[Depends(require("bot"))])


@router.post("/visitors/{visitor_id}/messages", response_model=Turn)
async def receive(visitor_id: str, body: IncomingMessage, request: Request) -> Response:
    """Record a user message; start, continue or renew the visitor's session
    (``client_message_id``: a retry appends nothing and answers the same turn, ``duplicate``)."""
    turn = await ledger_of(request).receive(
        visitor_id, body.text, session_id=body.session_id,
        client_message_id=body.client_message_id, channel=body.channel,
        context=body.context, metadata=body.metadata,
    )
    request.state.turn = turn  # for the turn metrics
    return json_of(turn)


@router.post("/sessions/{session_id}/replies", response_model=Message)
async def reply(session_id: str, body: Reply, request: Request) -> Response:
    """Record the bot's (or the system's) message; idempotent per ``client_message_id``."""
    return json_of(await ledger_of(request).reply(
        session_id, body.text, role=body.role,
        client_message_id=body.client_message_id, metadata=body.metadata,
    ))


@router.put("/sessions/{session_id}/slots/{key}", response_model=SessionState)
async def set_slot(session_id: str, key: str, body: SlotValue, request: Request) -> Response:
    """Set a slot (``scope: "user"``: a fact about the person that memory keeps)."""
    return json_of(await ledger_of(request).set_slot(session_id, key, body.value, scope=body.scope))


@router.delete("/sessions/{session_id}/slots/{key}", response_model=SessionState)
async def clear_slot(session_id: str, key: str, request: Request) -> Response:
    return json_of(await ledger_of(request).clear_slot(session_id, key))


@router.post("/sessions/{session_id}/tasks", response_model=SessionState)
async def start_task(session_id: str, body: NewTask, request: Request) -> Response:
    """Mark a task in progress (the session then idles on the longer task timeout)."""
    return json_of(await ledger_of(request).start_task(session_id, body.task))


@router.post("/sessions/{session_id}/tasks/{task}/completion", response_model=SessionState)
async def complete_task(session_id: str, task: str, request: Request) -> Response:
    return json_of(await ledger_of(request).complete_task(session_id, task))


@router.post("/sessions/{session_id}/end", response_model=SessionState)
async def end_session(session_id: str, request: Request, body: Ending | None = None) -> Response:
    """End the session on purpose (one past its deadline is recorded as timed out)."""
    reason = body.reason if body is not None else "ended"
    return json_of(await ledger_of(request).end_session(session_id, reason=reason))


@router.post("/visitors/{visitor_id}/identity", response_model=VisitorState)
async def link_identity(visitor_id: str, body: IdentityLink, request: Request) -> Response:
    """Link the visitor to the user they logged in as (again: a no-op; another user: 409)."""
    return json_of(await ledger_of(request).link_identity(visitor_id, body.user_id))


@router.get("/sessions/{session_id}", response_model=SessionState)
async def session(session_id: str, request: Request, as_of: datetime | None = None) -> Response:
    """The session rebuilt from its events, now or as it stood at ``as_of``."""
    return json_of(await ledger_of(request).session(session_id, as_of=as_of))


@router.get("/visitors/{visitor_id}", response_model=VisitorState)
async def visitor(visitor_id: str, request: Request) -> Response:
    """The visitor's identity link and sessions (404 if never seen)."""
    found = await ledger_of(request).visitor(visitor_id)
    if found is None:
        raise HTTPException(404, "No such visitor.")
    return json_of(found)


@router.get("/visitors/{visitor_id}/current-session", response_model=SessionState)
async def current_session(visitor_id: str, request: Request) -> Response:
    """The visitor's live session (404 if they have none right now)."""
    found = await ledger_of(request).current_session(visitor_id)
    if found is None:
        raise HTTPException(404, "The visitor has no live session.")
    return json_of(found)


__all__ = ["router"]
