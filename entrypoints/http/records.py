"""The read models' endpoints (transcripts, memory: scope ``bot`` or ``analyst``; analytics,
resessionize: ``analyst``), the audit's (``auditor``: replay, history, verify, export) and the
operator's (``admin``: erasure, projection status, the sweep and its backlog)."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ... import Analytics, ErasureReceipt, Memory, Resessionized, SessionState, Transcript
from .answers import (
    HISTORY,
    PROJECTIONS,
    CaughtUp,
    HistoryEntry,
    ProjectionState,
    SweepBacklog,
    SweepDone,
    Verification,
    json_list,
    json_of,
)
from .auth import ledger_of, require
from .bodies import ErasureRequest

readers = APIRouter(prefix="/v1", tags=["read models"], dependencies=[Depends(require("bot", "analyst"))])
analysts = APIRouter(prefix="/v1", tags=["read models"], dependencies=[Depends(require("analyst"))])
auditors = APIRouter(prefix="/v1", tags=["audit"], dependencies=[Depends(require("auditor"))])
admins = APIRouter(prefix="/v1", tags=["operations"], dependencies=[Depends(require("admin"))])

NDJSON = "application/x-ndjson"


@readers.get("/transcripts", response_model=Transcript)
async def transcripts(
    request: Request, session_id: str | None = None, user_id: str | None = None,
    visitor_id: str | None = None, start: datetime | None = None, end: datetime | None = None,
) -> Response:
    """Messages of a session, a user or a visitor, and/or in ``[start, end)``."""
    return json_of(await ledger_of(request).transcript(
        session_id, user_id=user_id, visitor_id=visitor_id, start=start, end=end
    ))


@readers.get("/memory", response_model=Memory)
async def memory(request: Request, user_id: str | None = None, visitor_id: str | None = None) -> Response:
    """What the bot remembers about a user (across their sessions), or an anonymous visitor."""
    return json_of(await ledger_of(request).memory(user_id=user_id, visitor_id=visitor_id))


@analysts.get("/analytics", response_model=Analytics)
async def analytics(
    request: Request, start: datetime | None = None, end: datetime | None = None,
    as_of: datetime | None = None,
) -> Response:
    """Session analytics for sessions started in ``[start, end)``, as of ``as_of``."""
    return json_of(await ledger_of(request).analytics(start=start, end=end, as_of=as_of))


@analysts.get("/resessionize", response_model=Resessionized)
async def resessionize(
    request: Request, timeout: timedelta, start: datetime | None = None, end: datetime | None = None,
) -> Response:
    """Conversation counts had the idle timeout been ``timeout`` (an ISO 8601 duration: ``PT10M``)."""
    return json_of(await ledger_of(request).resessionize(timeout, start=start, end=end))


@auditors.get("/sessions/{session_id}/replay", response_model=SessionState)
async def replay(session_id: str, until: datetime, request: Request) -> Response:
    """The session exactly as the live API showed it at ``until``, from the log only."""
    return json_of(await ledger_of(request).replay(session_id, until=until))


@auditors.get("/sessions/{session_id}/history", response_model=list[HistoryEntry])
async def history(
    session_id: str, request: Request, until: datetime | None = None, version: int | None = None,
) -> Response:
    """Each stored event of the session and the state right after it (from the log only)."""
    steps = await ledger_of(request).history(session_id, until=until, version=version)
    return json_list(HISTORY, [HistoryEntry.of(step) for step in steps])


@auditors.get("/audit/verify", response_model=Verification)
async def verify(request: Request, session_id: str | None = None, anchor: str | None = None) -> Response:
    """Recompute the hash chains (the whole log and its seals, or one session's chain)."""
    report = await ledger_of(request).verify(session_id, anchor=anchor)
    return json_of(Verification.of(report))


@auditors.get(
    "/audit/export", response_class=Response,
    responses={200: {"content": {NDJSON: {}}, "description": "The JSONL audit bundle."}},
)
async def export(request: Request, user_id: str | None = None, session_id: str | None = None) -> Response:
    """The self-describing JSONL bundle of a user's or a session's events, with hashes and a
    final verification line."""
    ledger = ledger_of(request)

    def write() -> str:
        out = io.StringIO()
        ledger.sync.export_audit(out, user_id=user_id, session_id=session_id)
        return out.getvalue()

    return Response(await ledger.run("export_audit", write), media_type=NDJSON)


@admins.post("/erasures", response_model=ErasureReceipt)
async def erase(body: ErasureRequest, request: Request) -> Response:
    """Erase a user's (with every visitor linked to them) or a visitor's content: their keys are
    destroyed; the receipt is recorded in the log."""
    return json_of(await ledger_of(request).erase(user_id=body.user_id, visitor_id=body.visitor_id))


@admins.get("/operations/projections", response_model=list[ProjectionState])
async def projections(request: Request) -> Response:
    """Each read model's position, the head of the log, its lag and its failed events."""
    status = await ledger_of(request).projection_status()
    return json_list(PROJECTIONS, [
        ProjectionState(name=s.name, position=s.position, head=s.head, lag=s.lag, failed=s.failed)
        for s in status
    ])


@admins.post("/operations/catch-up", response_model=CaughtUp)
async def catch_up(request: Request) -> Response:
    """Bring every read model up to the head of the log now (the worker does this on a schedule)."""
    return json_of(CaughtUp(applied=await ledger_of(request).catch_up()))


@admins.get("/operations/sweep-backlog", response_model=SweepBacklog)
async def sweep_backlog(request: Request) -> Response:
    return json_of(SweepBacklog(due=await ledger_of(request).sweep_backlog()))


@admins.post("/operations/sweep", response_model=SweepDone)
async def sweep(request: Request) -> Response:
    """Time out every session idle past its deadline now (the worker does this on a schedule)."""
    return json_of(SweepDone(timed_out=await ledger_of(request).sweep()))


__all__ = ["admins", "analysts", "auditors", "readers"]
