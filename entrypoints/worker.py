"""``chatledger worker``: the background jobs as a process of their own."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated, Optional

import typer

from .. import ChatLedger
from ..application.retention import RetentionPolicy
from .cli_options import OptionalText


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
) -> None:
    """Time out idle sessions, keep the read models current (and apply retention)
    until stopped with Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    retention = RetentionPolicy.days(retention_days, archive_dir) if retention_days else None
    with ChatLedger.open(database) as ledger:
        if once:
            ledger.catch_up()
            print(ledger.sweep(all_tenants=True))
            if retention is not None:
                ledger.archive_closed_sessions(retention.archive_after, retention.archive_dir, all_tenants=True)
            return
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        with ledger.background_jobs(
            interval, retention=retention, projections_interval=projections_interval
        ):
            stopped.wait()
