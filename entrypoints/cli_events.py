"""CLI for subscribers outside the process: ``chatledger events follow|deliver|dead-letters``.

Commands stay thin: they call the public API (``ChatLedger.events_after``,
``ChatLedger.webhook``). Registered in :mod:`chatledger.entrypoints.cli` by
:func:`register`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from ..domain import validation as v
from .cli_options import DatabaseOption, open_ledger

events_app = typer.Typer(no_args_is_help=True, help="Follow the event log from outside the process.")
err_console = Console(stderr=True)

IntervalOption = Annotated[
    float, typer.Option("--interval", help="Seconds between polls when there is nothing new.")
]


def register(app: typer.Typer) -> None:
    """Add ``chatledger events …`` to the main app."""
    app.add_typer(events_app, name="events")


@events_app.command("follow")
def follow(
    after: Annotated[
        int, typer.Option("--after", help="Start after this position (0: from the first event).")
    ] = 0,
    content: Annotated[
        bool, typer.Option("--content", help="Decrypt personal fields (default: sealed).")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Print what is there now and exit (no polling).")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", help="Events read per query.")] = 1000,
    interval: IntervalOption = 1.0,
    database: DatabaseOption = None,
) -> None:
    """Print every event after --after as JSON lines (one event a line, in log
    order), then keep polling for new ones unless --once. Each line carries its
    "position": resume with --after set to the last one printed."""
    position = after
    v.check_number("interval", interval, maximum=86_400.0)
    with open_ledger(database, read_only=True) as ledger:
        while True:
            batch = ledger.events_after(position, limit=limit, content=content)
            try:
                for event in batch:
                    sys.stdout.write(event.model_dump_json() + "\n")
                sys.stdout.flush()
            except BrokenPipeError:  # e.g. `| head`: the reader has gone
                sys.stderr.close()
                raise typer.Exit(0) from None
            if batch:
                position = batch[-1].position
                if len(batch) == limit:
                    continue
            if once:
                return
            time.sleep(interval)


@events_app.command("deliver")
def deliver(
    name: Annotated[str, typer.Option("--name", help="Subscription name (its position is stored under it).")],
    url: Annotated[str, typer.Option("--url", help="Where each event is POSTed (http or https).")],
    once: Annotated[
        bool, typer.Option("--once", help="Deliver up to the head of the log and exit.")
    ] = False,
    content: Annotated[
        bool, typer.Option("--content", help="Send personal fields decrypted (default: sealed).")
    ] = False,
    max_attempts: Annotated[int, typer.Option("--max-attempts", help="Tries per event before a dead letter.")] = 5,
    backoff: Annotated[float, typer.Option("--backoff", help="Seconds before the first retry (doubling).")] = 0.5,
    max_backoff: Annotated[float, typer.Option("--max-backoff", help="Longest wait between retries.")] = 60.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 10.0,
    skip_dead_letters: Annotated[
        bool,
        typer.Option(
            "--skip-dead-letters",
            help="Record a dead letter and move on (default: record it and stop at that event).",
        ),
    ] = False,
    interval: IntervalOption = 1.0,
    database: DatabaseOption = None,
) -> None:
    """POST every event after the subscription's position to --url, in log
    order, at least once (header Chatledger-Event-Id for deduplication), with
    retries and backoff; after --max-attempts a dead letter. Prints a JSON
    report; exits 1 if it stopped at a dead letter."""
    from .. import ChatLedger

    tenant = os.environ.get("CHATLEDGER_TENANT", "default")  # the tenant's events only
    with ChatLedger.open(database, tenant=tenant) as ledger:
        worker = ledger.webhook(
            name, url, content=content, max_attempts=max_attempts, backoff=backoff,
            max_backoff=max_backoff, timeout=timeout,
            on_dead_letter="skip" if skip_dead_letters else "stop",
        )
        report = worker.deliver_once() if once else worker.run(interval)
    print(report.model_dump_json())
    if report.stopped:
        letter = report.dead_letters[-1]
        err_console.print(
            f"[red]error:[/] subscription {name!r} stopped at position {letter.position} "
            f"(event {letter.event_id}) after {letter.attempts} failed attempts: {letter.last_error}. "
            "Fix the receiver and run again (it resumes with that event), or pass --skip-dead-letters."
        )
        # Not typer.Exit: main() runs the app with standalone_mode=False, where
        # click returns an Exit's code instead of exiting with it.
        sys.exit(1)


@events_app.command("dead-letters")
def dead_letters(
    name: Annotated[str, typer.Option("--name", help="Subscription name.")],
    database: DatabaseOption = None,
) -> None:
    """Print the subscription's dead letters as JSON lines, in log order."""
    with open_ledger(database, read_only=True) as ledger:
        from ..application.webhooks import list_dead_letters

        letters = list_dead_letters(ledger, name)
    for letter in letters:
        print(json.dumps(letter.model_dump(mode="json")))
