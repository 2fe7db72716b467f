"""The ``chatledger`` command line. Commands stay thin: they call the public API."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Optional

import typer
from chatledger import ChatLedger, ChatLedgerError
from chatledger.infrastructure.cli_options import DatabaseOption
from rich.console import Console

from .cli_audit import audit_app, erase
from .cli_events import register as register_event_commands
from .cli_projections import register as register_projection_commands

app = typer.Typer(no_args_is_help=True, help="Event-sourced conversation state for chatbots.")
session_app = typer.Typer(no_args_is_help=True, help="Inspect sessions.")
app.add_typer(session_app, name="session")
app.add_typer(audit_app, name="audit")
app.command("erase")(erase)
register_projection_commands(app)
register_event_commands(app)

console = Console()
err_console = Console(stderr=True)



def open_ledger(database: str | None) -> ChatLedger:
    return ChatLedger.open(database)


def parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise typer.BadParameter(f"{value!r} is not an ISO-8601 time (e.g. 2026-03-02T14:03:00Z)") from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def demo(
    database: Annotated[
        str, typer.Option("--database", "-d", help="Where the demo writes its events.")
    ] = "sqlite:///chatledger-demo.db",
) -> None:
    """Run a scripted conversation: questions, an hour away, a returning visit, a login."""
    from .demo import run_demo

    ids = run_demo(database, console)
    console.print(
        f"\nRebuild any session yourself: chatledger session show {ids['second_session_id']} "
        f"--database {database}"
    )


@session_app.command("show")
def session_show(
    session_id: str,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="ISO time: the state then.")] = None,  # noqa: UP045
    database: DatabaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a session rebuilt from its events (optionally as it stood at --as-of)."""
    from .demo import _print_state

    with open_ledger(database) as ledger:
        state = ledger.session(session_id, as_of=parse_time(as_of) if as_of else None)
    if as_json:
        print(state.model_dump_json(indent=2))
    else:
        _print_state(console, state)


from .worker import worker

app.command("worker")(worker)


def main() -> None:
    """Entry point: one red line and exit code 1 for any chatledger error."""
    try:
        app(standalone_mode=False)
    except ChatLedgerError as err:
        err_console.print(f"[red]error:[/] {err}")
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
