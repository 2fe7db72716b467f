"""``chatledger keys create|revoke|list``: the HTTP service's API keys (stored hashed)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .cli_options import DatabaseOption, open_ledger

keys_app = typer.Typer(no_args_is_help=True, help="API keys of the HTTP service (chatledger serve).")


def register(app: typer.Typer) -> None:
    """Add ``chatledger keys …`` to the main app."""
    app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for (shown by list).")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="bot, analyst, auditor, admin or metrics; repeat for more.")
    ],
    database: DatabaseOption = None,
    tenant: Annotated[
        str | None, typer.Option(help="The tenant the key serves (default: CHATLEDGER_TENANT, or default).")
    ] = None,
) -> None:
    """Create a key; prints it once as JSON ({"key_id", "token", ...}): only its hash is kept."""
    with open_ledger(database) as ledger:
        key, token = ledger.api_keys.create(name, scope, tenant=tenant or ledger.tenant_id)
    print(json.dumps({**key.model_dump(mode="json"), "token": token}))


@keys_app.command("revoke")
def revoke(key_id: str, database: DatabaseOption = None) -> None:
    """Revoke a key: its next request is refused (401)."""
    with open_ledger(database, read_only=True) as ledger:
        key = ledger.api_keys.revoke(key_id)
    print(key.model_dump_json())


@keys_app.command("list")
def list_keys(database: DatabaseOption = None) -> None:
    """Every key (revoked ones too), one JSON line each, without secrets."""
    with open_ledger(database, read_only=True) as ledger:
        for key in ledger.api_keys.list():
            print(key.model_dump_json())


__all__ = ["keys_app", "register"]
