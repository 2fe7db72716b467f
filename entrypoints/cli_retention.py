"""``chatledger retention purge``: archive long-closed sessions and remove their events from the log.

Registered in :mod:`chatledger.entrypoints.cli`; see docs/operations.md "Retention".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .cli_options import DatabaseOption, JsonOption, open_ledger

retention_app = typer.Typer(no_args_is_help=True, help="Log retention: remove archived sessions' events from the log.")
console = Console(highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``chatledger retention …`` to the main app."""
    app.add_typer(retention_app, name="retention")


@retention_app.command("purge")
def purge(
    older_than_days: Annotated[
        float, typer.Option("--older-than-days", help="Sessions closed more than this many days ago.")
    ],
    archive_dir: Annotated[Path, typer.Option("--archive-dir", help="The retention archive folder.")],
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Archive the sessions closed more than N days ago (if not yet), then remove the
    archived ones' events from the live log, under a sealed record that verify checks."""
    from ..application.log_retention import remove_archived_sessions  # the store's modules only when run
    from ..application.retention import RetentionPolicy

    policy = RetentionPolicy.days(older_than_days, archive_dir)  # checks the number of days
    with open_ledger(database, read_only=True) as ledger:
        archived = ledger.archive_closed_sessions(policy.archive_after, archive_dir, all_tenants=True)
        result = remove_archived_sessions(ledger, policy.archive_after, archive_dir)
    if as_json:
        doc = {
            "archived": archived.archived,
            "archive": str(archived.path) if archived.path else None,
            "removed_sessions": result.removed_sessions,
            "removed_events": result.removed_events,
            "removal_archives": [str(p) for p in result.paths],
            "kept": result.kept,
        }
        print(json.dumps(doc, indent=2))
        return
    console.print(f"archived {archived.archived} sessions" + (f" to {archived.path}" if archived.path else ""))
    console.print(
        f"removed {result.removed_events} events of {result.removed_sessions} sessions from the log"
        + (f" (archives: {', '.join(p.name for p in result.paths)})" if result.paths else "")
    )
    for reason, count in sorted(result.kept.items()):
        console.print(f"kept {count} sessions: {reason}")


__all__ = ["purge", "register", "retention_app"]
