"""OpenTelemetry spans, where the package is installed (the ``[otel]`` extra).

:func:`add_tracing` wraps the app in opentelemetry-instrumentation-asgi's middleware: a server
span per request (W3C ``traceparent`` from the client continues its trace), sent wherever the
process's tracer provider sends them (or ``tracer_provider``'s); by default only when such a
provider is configured (:func:`tracing_middleware`). The span is named after the
route template once it is known (``POST /v1/visitors/{visitor_id}/messages``, see
:func:`name_span`), and carries ``http.route`` and the request id. ``/healthz``, ``/readyz``
and ``/metrics`` are not traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from ... import ConfigurationError

SpanNamer = Callable[[str, str, str], None]
UNTRACED = "healthz,readyz,metrics"


def add_tracing(app: FastAPI, enabled: bool | None, tracer_provider: Any = None) -> None:
    """Add the tracing middleware, outermost (``enabled=None``: see :func:`tracing_middleware`)."""
    middleware = tracing_middleware(enabled, tracer_provider)
    if middleware is not None:
        app.add_middleware(
            middleware, excluded_urls=UNTRACED, exclude_spans=["receive", "send"],
            tracer_provider=tracer_provider,
        )


def tracing_middleware(enabled: bool | None, tracer_provider: Any = None) -> Any:
    """opentelemetry-instrumentation-asgi's middleware class, or None. ``enabled=None``: traced
    if the package is installed and spans would go somewhere (``tracer_provider`` given, or
    the process's provider set, e.g. by the SDK or ``opentelemetry-instrument``, before the
    app is made); a no-op tracer would cost ~0.2 ms CPU a request for nothing."""
    if enabled is False:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError as err:
        if enabled:
            raise ConfigurationError(
                "tracing=True needs the [otel] extra: pip install 'chatledger[otel]'."
            ) from err
        return None
    if enabled is None and tracer_provider is None and isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    ):
        return None
    return OpenTelemetryMiddleware


def name_span(method: str, route: str, request_id: str) -> None:
    """Name the request's span after its route, with ``http.route`` and the request id."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("chatledger.request_id", request_id)


__all__ = ["UNTRACED", "SpanNamer", "add_tracing", "name_span", "tracing_middleware"]
