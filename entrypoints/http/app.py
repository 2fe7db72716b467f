"""The HTTP/JSON service over :class:`~chatledger.aio.AsyncChatLedger` (``chatledger serve``).

:func:`create_app` builds the FastAPI app; its lifespan opens the ledger and closes it (after
the requests in flight). Every endpoint is one awaited ledger call, run in the ledger's worker
threads (:mod:`.conversations`, :mod:`.records`, :mod:`.operations`); errors are
``application/problem+json`` (:mod:`.problems`); bodies are bounded before they are read whole
(:mod:`.bodies`); keys and scopes are checked first (:mod:`.auth`); ``/metrics`` is
:mod:`.metrics`;
request ids and logs :mod:`.observe`.

Tenants: every request is served by its key's tenant's handle on the store (``ledger.tenant(id)``,
:func:`.auth.ledger_of`); without keys (``require_keys=False``), by the ``"default"`` tenant's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ... import ChatLedgerError, Clock, SessionPolicy
from ...application.aio import AsyncChatLedger
from ...application.api_keys import DEFAULT_TENANT
from ..console import console_router
from . import conversations, operations, records
from .auth import KEY_CACHE_SECONDS, KeyCache
from .bodies import BodyLimit, BodyTooLarge, BoundedBodies, body_bound
from .metrics import ServiceMetrics
from .observe import ObservedRequests
from .problems import error_problem, problem, service_problem
from .tracing import add_tracing, name_span, tracing_middleware

MAX_LAG = 10_000  # /readyz: the most events a read model may be behind


def create_app(
    database_url: str | None = None, *, policy: SessionPolicy | None = None,
    clock: Clock | None = None, workers: int | None = None, max_lag: int = MAX_LAG,
    require_keys: bool = True, key_cache_seconds: float = KEY_CACHE_SECONDS,
    tracing: bool | None = None, tracer_provider: Any = None, **settings: Any,
) -> FastAPI:
    """The service on the ledger at ``database_url`` (the arguments of
    :meth:`AsyncChatLedger.open`); ``/readyz`` fails while a read model lags ``max_lag``.
    ``require_keys=False`` serves without API keys (a service behind a gateway of your own);
    a checked key is remembered for ``key_cache_seconds`` (0: every request looks it up);
    ``tracing``: OpenTelemetry spans (None: if the ``[otel]`` extra is installed and a tracer
    provider is configured, or ``tracer_provider`` given)."""
    limit = BodyLimit()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opening = AsyncChatLedger.open(
            database_url, policy=policy, clock=clock, workers=workers, **settings
        )
        async with opening as ledger:
            limit.bytes = body_bound(ledger.sync.limits)
            app.state.ledgers = {DEFAULT_TENANT: ledger}
            metrics.watch(ledger.sync)
            yield

    try:
        service_version = version("chatledger")
    except PackageNotFoundError:  # pragma: no cover - a source tree
        service_version = "0"
    app = FastAPI(title="chatledger", version=service_version, lifespan=lifespan)
    app.state.require_keys = require_keys
    app.state.max_lag = max_lag
    app.state.key_cache = KeyCache(key_cache_seconds)
    metrics = app.state.metrics = ServiceMetrics()
    app.add_middleware(BoundedBodies, limit=limit)
    traced = tracing_middleware(tracing, tracer_provider) is not None
    app.add_middleware(ObservedRequests, metrics=metrics, name_span=name_span if traced else None)
    if traced:
        add_tracing(app, True, tracer_provider)  # outermost: the span covers the whole request
    add_error_handlers(app)
    for router in (
        conversations.router, records.readers, records.analysts, records.auditors, records.admins,
        operations.router,
    ):
        app.include_router(router)
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


__all__ = ["DEFAULT_TENANT", "MAX_LAG", "create_app"]
