"""The HTTP/JSON service over :class:`~chatledger.aio.AsyncChatLedger` (``chatledger serve``).

:func:`create_app` builds the FastAPI app; its lifespan opens the ledger and closes it (after
the requests in flight). Every endpoint is one awaited ledger call, run in the ledger's worker
threads; errors are ``application/problem+json`` (:mod:`.problems`); bodies are bounded before
they are read whole (:mod:`.bodies`).

Tenants: every request is served by the ledger of its tenant, :func:`ledger_of`; until API keys
(each bound to one tenant) arrive, every request is the ``"default"`` tenant's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ... import ChatLedgerError, Clock, Message, SessionPolicy, SessionState, Transcript, Turn
from ...application.aio import AsyncChatLedger
from ...application.api_keys import DEFAULT_TENANT
from ..console import console_router
from .auth import require, tenant_of
from .bodies import BodyLimit, BodyTooLarge, BoundedBodies, IncomingMessage, Reply, body_bound
from .problems import error_problem, problem, service_problem

MAX_LAG = 10_000  # /readyz: the most events a read model may be behind


def ledger_of(request: Request) -> AsyncChatLedger:
    """The ledger of the request's tenant (its key's; today every store has only "default")."""
    ledgers: dict[str, AsyncChatLedger] = request.app.state.ledgers
    ledger = ledgers.get(tenant_of(request))
    if ledger is None:  # a tenant this service does not hold: nothing of it can be found here
        raise HTTPException(404, "No such resource.")
    return ledger


def create_app(
    database_url: str | None = None, *, policy: SessionPolicy | None = None,
    clock: Clock | None = None, workers: int | None = None, max_lag: int = MAX_LAG,
    require_keys: bool = True, **settings: Any,
) -> FastAPI:
    """The service on the ledger at ``database_url`` (the arguments of
    :meth:`AsyncChatLedger.open`); ``/readyz`` fails while a read model lags ``max_lag``.
    ``require_keys=False`` serves without API keys (a service behind a gateway of your own)."""
    limit = BodyLimit()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opening = AsyncChatLedger.open(
            database_url, policy=policy, clock=clock, workers=workers, **settings
        )
        async with opening as ledger:
            limit.bytes = body_bound(ledger.sync.limits)
            app.state.ledgers = {DEFAULT_TENANT: ledger}
            yield

    try:
        service_version = version("chatledger")
    except PackageNotFoundError:  # pragma: no cover - a source tree
        service_version = "0"
    app = FastAPI(title="chatledger", version=service_version, lifespan=lifespan)
    app.state.require_keys = require_keys
    app.add_middleware(BoundedBodies, limit=limit)
    add_error_handlers(app)
    add_routes(app, max_lag)
    app.include_router(console_router(), prefix="/console")  # the web console (issue 15)
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChatLedgerError)
    async def ledger_error(request: Request, exc: ChatLedgerError) -> Response:
        return error_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        return service_problem("invalid-request", "The request was refused: see errors.", errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if isinstance(exc, BodyTooLarge):
            return service_problem("body-too-large", str(exc.detail), limit=exc.bound)
        if exc.status_code in (401, 403):
            name = "unauthorized" if exc.status_code == 401 else "forbidden"
            return service_problem(name, str(exc.detail), headers=exc.headers)
        if exc.status_code == 404:
            return service_problem("not-found", f"No resource at {request.url.path}.")
        return problem(exc.status_code, "about:blank", str(exc.detail), str(exc.detail))


def add_routes(app: FastAPI, max_lag: int) -> None:
    bot, reader = [Depends(require("bot"))], [Depends(require("bot", "analyst"))]

    @app.post("/v1/visitors/{visitor_id}/messages", tags=["conversations"], dependencies=bot)
    async def receive(visitor_id: str, body: IncomingMessage, request: Request) -> Turn:
        """Record a user message (``client_message_id``: a retry appends nothing and answers
        the same turn, ``duplicate`` true)."""
        return await ledger_of(request).receive(
            visitor_id, body.text, session_id=body.session_id,
            client_message_id=body.client_message_id, channel=body.channel,
            context=body.context, metadata=body.metadata,
        )

    @app.post("/v1/sessions/{session_id}/replies", tags=["conversations"], dependencies=bot)
    async def reply(session_id: str, body: Reply, request: Request) -> Message:
        """Record the bot's (or the system's) message; idempotent per ``client_message_id``."""
        return await ledger_of(request).reply(
            session_id, body.text, role=body.role,
            client_message_id=body.client_message_id, metadata=body.metadata,
        )

    @app.get("/v1/sessions/{session_id}", tags=["conversations"], dependencies=bot)
    async def session(session_id: str, request: Request, as_of: datetime | None = None) -> SessionState:
        """The session rebuilt from its events, now or as it stood at ``as_of``."""
        return await ledger_of(request).session(session_id, as_of=as_of)

    @app.get("/v1/transcripts", tags=["read models"], dependencies=reader)
    async def transcripts(
        request: Request, session_id: str | None = None, user_id: str | None = None,
        visitor_id: str | None = None, start: datetime | None = None, end: datetime | None = None,
    ) -> Transcript:
        """Messages of a session, a user or a visitor, and/or in ``[start, end)``."""
        return await ledger_of(request).transcript(
            session_id, user_id=user_id, visitor_id=visitor_id, start=start, end=end
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], response_model=None)
    async def readyz(request: Request) -> JSONResponse | dict[str, Any]:
        """The database answers and no read model lags more than ``max_lag`` events."""
        try:
            status = await ledger_of(request).projection_status()
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store: not ready
            return service_problem("not-ready", f"The database does not answer: {type(exc).__name__}.")
        lag = {s.name: s.lag for s in status}
        if any(n > max_lag for n in lag.values()):
            return service_problem("not-ready", f"A read model lags over {max_lag} events.", lag=lag)
        return {"status": "ready", "lag": lag}


__all__ = ["DEFAULT_TENANT", "create_app", "ledger_of"]
