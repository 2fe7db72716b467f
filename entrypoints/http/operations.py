"""``/healthz``, ``/readyz`` (no key) and ``/metrics`` (a key with scope ``metrics``: the
counts and lags it shows are the operator's, not the public's)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from .answers import Health, Ready, json_of
from .auth import ledger_of, require
from .metrics import ServiceMetrics
from .problems import service_problem

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Response:
    """The process answers."""
    return json_of(Health(status="ok"))


@router.get("/readyz", response_model=Ready, responses={503: {"description": "Not ready (problem+json)."}})
async def readyz(request: Request) -> Response:
    """The database answers and no read model lags more than ``max_lag`` events."""
    max_lag: int = request.app.state.max_lag
    try:
        status = await ledger_of(request).projection_status()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the store: not ready
        return service_problem("not-ready", f"The database does not answer: {type(exc).__name__}.")
    lag = {s.name: s.lag for s in status}
    if any(n > max_lag for n in lag.values()):
        return service_problem("not-ready", f"A read model lags over {max_lag} events.", lag=lag)
    return json_of(Ready(status="ready", lag=lag))


@router.get(
    "/metrics", dependencies=[Depends(require("metrics"))], response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, turns, commits, conflicts, group-commit batches, each read
    model's lag, the sweep's backlog and duration, erasures (docs/api.md, "Metrics")."""
    service: ServiceMetrics = request.app.state.metrics
    body = await ledger_of(request).run("metrics", service.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


__all__ = ["router"]
