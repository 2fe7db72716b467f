"""``chatledger serve``: the HTTP service on uvicorn (the ``[server]`` extra)."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from .. import ConfigurationError
from .cli_options import DatabaseOption


def serve(
    database: DatabaseOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: one the OS picks).")] = 8000,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ledger worker threads (default: the pool size, 4 on SQLite).")
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="json (one object a line, with request ids) or text.")
    ] = "json",
) -> None:
    """Serve the ledger over HTTP/JSON (docs/api.md, "HTTP service"); Ctrl-C or SIGTERM stops
    it after the requests in flight."""
    try:
        import uvicorn  # the [server] extra

        from .http.app import create_app
        from .http.observe import log_config
    except ImportError as err:
        raise ConfigurationError(
            f"chatledger serve needs the [server] extra ({err.name} is missing): "
            "pip install 'chatledger[server]'."
        ) from err
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # it found: this one, so that a stop on purpose exits 0 (as `chatledger worker` does).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _stopped)
    if log_format not in ("json", "text"):
        raise typer.BadParameter(f"{log_format!r}: json or text.", param_hint="--log-format")
    uvicorn.run(
        create_app(database, workers=workers), host=host, port=port, log_level="info",
        log_config=log_config(log_format), access_log=False,
    )


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


__all__ = ["serve"]
