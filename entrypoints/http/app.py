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

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from ... import ChatLedgerError, Clock, Message, SessionPolicy, SessionState, Transcript, Turn
from ...application.aio import AsyncChatLedger
from .bodies import BodyLimit, BodyTooLarge, BoundedBodies, IncomingMessage, Reply, body_bound
from .problems import error_problem, problem, service_problem

DEFAULT_TENANT = "default"
MAX_LAG = 10_000  # /readyz: the most events a read model may be behind


def ledger_of(request: Request) -> AsyncChatLedger:
    """The ledger of the request's tenant (today: always the default tenant's)."""
    ledgers: dict[str, AsyncChatLedger] = request.app.state.ledgers
    return ledgers[DEFAULT_TENANT]


def create_app(
    database_url: str | None = None, *, policy: SessionPolicy | None = None,
    clock: Clock | None = None, workers: int | None = None, max_lag: int = MAX_LAG,
    **settings: Any,
) -> FastAPI:
    """The service on the ledger at ``database_url`` (the arguments of
    :meth:`AsyncChatLedger.open`); ``/readyz`` fails while a read model lags ``max_lag``."""
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
    app.add_middleware(BoundedBodies, limit=limit)
    add_error_handlers(app)
    add_routes(app, max_lag)
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
        if exc.status_code == 404:
            return service_problem("not-found", f"No resource at {request.url.path}.")
        return problem(exc.status_code, "about:blank", str(exc.detail), str(exc.detail))


def add_routes(app: FastAPI, max_lag: int) -> None:
    @app.post("/v1/visitors/{visitor_id}/messages", tags=["conversations"])
    async def receive(visitor_id: str, body: IncomingMessage, request: Request) -> Turn:
        """Record a user message (``client_message_id``: a retry appends nothing and answers
        the same turn, ``duplicate`` true)."""
        return await ledger_of(request).receive(
            visitor_id, body.text, session_id=body.session_id,
            client_message_id=body.client_message_id, channel=body.channel,
            context=body.context, metadata=body.metadata,
        )

    @app.post("/v1/sessions/{session_id}/replies", tags=["conversations"])
    async def reply(session_id: str, body: Reply, request: Request) -> Message:
        """Record the bot's (or the system's) message; idempotent per ``client_message_id``."""
        return await ledger_of(request).reply(
            session_id, body.text, role=body.role,
            client_message_id=body.client_message_id, metadata=body.metadata,
        )

    @app.get("/v1/sessions/{session_id}", tags=["conversations"])
    async def session(session_id: str, request: Request, as_of: datetime | None = None) -> SessionState:
        """The session rebuilt from its events, now or as it stood at ``as_of``."""
        return await ledger_of(request).session(session_id, as_of=as_of)

    @app.get("/v1/transcripts", tags=["read models"])
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
