"""The ``chatledger`` command line. Commands stay thin: they call the public API.

Exit status: 0 ok; 1 a failed verification or a chatledger error (one red
``error:`` line); 2 a usage error (typer prints the usage and a hint); 130 Ctrl-C.
"""

from __future__ import annotations

import sys
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import ChatLedgerError
from .cli_audit import audit_app, erase
from .cli_events import register as register_event_commands
from .cli_keys import register as register_key_commands
from .cli_ops import register as register_ops_commands
from .cli_options import DatabaseOption, JsonOption, open_ledger, parse_time
from .cli_projections import register as register_projection_commands
from .cli_retention import register as register_retention_commands

app = typer.Typer(no_args_is_help=True, help="Event-sourced conversation state for chatbots.")
session_app = typer.Typer(no_args_is_help=True, help="Inspect sessions.")
app.add_typer(session_app, name="session")
app.add_typer(audit_app, name="audit")
app.command("erase")(erase)
register_projection_commands(app)
register_event_commands(app)
register_key_commands(app)
register_ops_commands(app)
register_retention_commands(app)

console = Console()
err_console = Console(stderr=True, highlight=False)

__all__ = ["app", "main", "open_ledger", "parse_time"]


def _print_version(value: bool) -> None:
    if value:
        try:
            print(f"chatledger {version('chatledger')}")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            print("chatledger (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    actor: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--actor", metavar="ACTOR",
            help="Who the events this command appends are recorded as (default: operator:$USER).",
        ),
    ] = None,
    table_prefix: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here
        typer.Option(
            "--prefix", envvar="CHATLEDGER_TABLE_PREFIX",
            help="The ledger's table prefix (default chatledger_: the names stores always had).",
        ),
    ] = None,
) -> None:
    """Event-sourced conversation state for chatbots."""
    from .cli_options import cli_actor, cli_table_prefix

    if table_prefix is not None:  # before any command: every command's settings read it (until it ends)
        ctx.with_resource(cli_table_prefix(table_prefix))
    ctx.with_resource(cli_actor(actor))  # until the command ends (an in-process run leaves nothing set)


@app.command()
def demo(
    database: Annotated[
        str,
        typer.Option(
            "--database",
            "-d",
            envvar="CHATLEDGER_DATABASE_URL",
            help="Where the demo writes its events.",
        ),
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
    as_of: Annotated[
        Optional[datetime],  # noqa: UP045
        typer.Option("--as-of", parser=parse_time, metavar="TIME", help="ISO time: the state then."),
    ] = None,
    database: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a session rebuilt from its events (optionally as it stood at --as-of)."""
    from .demo import content_erased, print_session_state

    with open_ledger(database, read_only=True) as ledger:
        state = ledger.session(session_id, as_of=as_of)
        erased = content_erased(ledger, state.session_id)
    if as_json:
        print(state.model_dump_json(indent=2))
    else:
        print_session_state(console, state, erased=erased)


from .cli_serve import serve
from .worker import worker

app.command("worker")(worker)
app.command("serve")(serve)


def main() -> None:
    """Entry point (the ``chatledger`` script and ``python -m chatledger``).

    typer runs in standalone mode: it prints usage errors with the usage line and
    a hint (exit 2), turns ``typer.Exit(code)`` into that exit status and Ctrl-C
    into 130. A chatledger error is one red line and exit status 1.
    """
    try:
        app()
    except ChatLedgerError as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:  # outside typer's own handling (e.g. while importing)
        sys.exit(130)
