"""``chatledger worker``: the background jobs as a process of their own."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .cli_options import OptionalText

if TYPE_CHECKING:
    from .. import ChatLedger


def worker(
    database: Annotated[
        OptionalText,
        typer.Option("--database", "-d", envvar="CHATLEDGER_DATABASE_URL", help="Database URL."),
    ] = None,
    interval: Annotated[
        float, typer.Option(envvar="CHATLEDGER_SWEEP_INTERVAL", help="Seconds between sweeps.")
    ] = 30.0,
    retention_days: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            envvar="CHATLEDGER_RETENTION_DAYS",
            help="Archive sessions closed more than this many days ago (default: off).",
        ),
    ] = None,
    archive_dir: Annotated[
        str, typer.Option(envvar="CHATLEDGER_ARCHIVE_DIR", help="Where archives are written.")
    ] = "chatledger-archive",
    projections_interval: Annotated[
        float,
        typer.Option(
            envvar="CHATLEDGER_PROJECTIONS_INTERVAL",
            help="Seconds between read-model catch-ups.",
        ),
    ] = 5.0,
    once: Annotated[
        bool,
        typer.Option("--once", help="Catch the read models up, run one sweep, print the count, exit."),
    ] = False,
    metrics_port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            min=0, max=65535, envvar="CHATLEDGER_METRICS_PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (the [server] extra; 0: a free port).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Address of the metrics endpoint (no key: keep it on loopback or a private network).")
    ] = "127.0.0.1",
) -> None:
    """Time out idle sessions, keep the read models current (and apply retention)
    until stopped with Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from .. import ChatLedger
    from ..application.retention import RetentionPolicy

    retention = RetentionPolicy.days(retention_days, archive_dir) if retention_days else None
    with ChatLedger.open(database) as ledger:
        if once:
            ledger.catch_up()
            print(ledger.sweep(all_tenants=True))
            if retention is not None:
                ledger.archive_closed_sessions(retention.archive_after, retention.archive_dir, all_tenants=True)
            return
        if metrics_port is not None:
            serve_metrics(ledger, metrics_host, metrics_port)
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        with ledger.background_jobs(
            interval, retention=retention, projections_interval=projections_interval
        ):
            stopped.wait()


def serve_metrics(ledger: ChatLedger, host: str, port: int) -> None:
    """The ledger's metrics (as the service's ``/metrics`` shows them) on a thread of their own."""
    from .. import ConfigurationError

    try:
        from prometheus_client import start_http_server

        from .http.metrics import ledger_registry
    except ImportError as err:
        raise ConfigurationError(
            f"--metrics-port needs the [server] extra ({err.name} is missing): pip install 'chatledger[server]'."
        ) from err
    server, _ = start_http_server(port, host, registry=ledger_registry(ledger))
    print(f"metrics on http://{host}:{server.server_port}/metrics", flush=True)
