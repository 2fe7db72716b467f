"""Each request observed once, by the outermost middleware: a request id, metrics, a log line.

:class:`ObservedRequests` (pure ASGI) gives every request an id (the client's ``X-Request-Id``
if it is a short token, else a new one), answers it in the ``X-Request-Id`` header, feeds
:class:`~.metrics.ServiceMetrics`, and logs one record on the ``chatledger.http`` logger:
``request_id``, ``method``, ``route`` (the template), ``status``, ``duration_ms`` and the
``key_id`` of the API key. :class:`JsonLogs` formats records as one JSON object a line (what
``chatledger serve`` logs, uvicorn's own lines included; ``--log-format text`` for humans).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...domain.actors import acting_as

from .metrics import ServiceMetrics, route_of
from .tracing import SpanNamer

log = logging.getLogger("chatledger.http")

REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
HTTP_ACTOR = "service:http"
FIELDS = ("request_id", "method", "route", "status", "duration_ms", "key_id", "tenant")


class ObservedRequests:
    """See the module docstring (added last, so it sees every answer, refusals included)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, name_span: SpanNamer | None = None) -> None:
        self.app, self.metrics, self.name_span = app, metrics, name_span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value if REQUEST_ID.fullmatch(value) else b""
                break
        if not request_id:
            request_id = uuid.uuid4().hex.encode()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
                if self.name_span is not None:  # before the answer ends: that ends the span
                    self.name_span(scope.get("method", ""), route_of(scope), request_id.decode())
            await send(message)

        try:
            # Every event this request appends records the request id, and the actor
            # "service:http" until its API key is checked (auth.require: "api-key:<id>").
            with acting_as(HTTP_ACTOR, request_id.decode()):
                await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route = self.metrics.observe(scope, status, seconds)
            if log.isEnabledFor(logging.INFO):
                key = scope.get("state", {}).get("key")
                log.info(
                    "%s %s %d", scope.get("method", ""), route, status,
                    extra={
                        "request_id": request_id.decode(), "method": scope.get("method", ""),
                        "route": route, "status": status, "duration_ms": round(seconds * 1000, 3),
                        "key_id": getattr(key, "key_id", None), "tenant": getattr(key, "tenant", None),
                    },
                )


class JsonLogs(logging.Formatter):
    """A log record as one JSON object: ``time``, ``level``, ``logger``, ``message``, the request
    fields when the record has them, and ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_config(fmt: str = "json", level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``chatledger serve``: uvicorn's loggers and
    chatledger's, to stderr, as JSON lines (``fmt="json"``) or text."""
    formatter = (
        {"()": f"{__name__}.JsonLogs"} if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    loggers = {name: {"handlers": ["default"], "level": level.upper(), "propagate": False}
               for name in ("uvicorn", "uvicorn.error", "chatledger")}
    loggers["uvicorn.error"] = {"level": level.upper()}  # propagates to "uvicorn"
    loggers["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}  # ours instead
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"default": formatter}, "handlers": {"default": handler}, "loggers": loggers,
    }


__all__ = ["JsonLogs", "ObservedRequests", "log_config"]
