"""``chatledger backup create|restore|verify`` and ``chatledger content-keys rotate|new-master``."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from .cli_options import DatabaseOption, OptionalText, open_ledger

if TYPE_CHECKING:
    from ..application.backups import BackupCheck

backup_app = typer.Typer(no_args_is_help=True, help="Back up, restore and verify a store.")
content_keys_app = typer.Typer(
    no_args_is_help=True,
    help="The master key that wraps the content keys (see docs/operations.md).",
)
console = Console(highlight=False)

FolderArgument = Annotated[Path, typer.Argument(help="The backup folder.")]
AnchorOption = Annotated[
    OptionalText,
    typer.Option(
        "--anchor",
        help="ROOT@POSITION published outside the backup (chatledger audit anchor): the "
        "restored log must hash to it (the manifest alone is not authenticated).",
    ),
]


def register(app: typer.Typer) -> None:
    """Add ``chatledger backup …`` and ``chatledger content-keys …`` to the main app."""
    app.add_typer(backup_app, name="backup")
    app.add_typer(content_keys_app, name="content-keys")


@backup_app.command("create")
def create(
    folder: Annotated[Path, typer.Argument(help="A new folder.")], database: DatabaseOption = None
) -> None:
    """Seal, copy the store online into FOLDER and write its manifest; print the manifest (JSON)."""
    from ..application.backups import create_backup  # the store's modules only when run

    with open_ledger(database, read_only=True) as ledger:
        manifest = create_backup(ledger, folder)
    print(manifest.model_dump_json(indent=2))


def _report(check: BackupCheck, what: str) -> None:
    if check.ok:
        console.print(
            f"[green]OK[/] {what}: {check.events} events, head at position {check.head}, "
            f"matches the backup's anchor {check.anchor or '-'}"
        )
    else:
        console.print(f"[red]BROKEN[/] {what}")
        for problem in check.problems:
            console.print(f"  {problem}")
        raise typer.Exit(code=1)


@backup_app.command("restore")
def restore(
    folder: FolderArgument,
    database: Annotated[
        str,
        typer.Option(
            "--database",
            "-d",
            help="The new store: a new SQLite file or an empty PostgreSQL schema.",
        ),
    ],
    anchor: AnchorOption = None,
) -> None:
    """Check FOLDER's files, load it into an empty store, rebuild its read models from the log,
    and verify it against the backup's anchor (or --anchor)."""
    from ..application.backups import restore_backup

    _report(restore_backup(folder, database, anchor=anchor), f"restored into {database}")


@backup_app.command("verify")
def verify(
    folder: FolderArgument, database: DatabaseOption = None, anchor: AnchorOption = None
) -> None:
    """Restore FOLDER into a scratch store (PostgreSQL: a new schema of --database) and verify it."""
    from ..application.backups import verify_backup

    _report(verify_backup(folder, database, anchor=anchor), f"backup {folder}")


@content_keys_app.command("new-master")
def new_master(
    key_id: Annotated[str, typer.Argument(help="Letters and digits naming the key, e.g. k2026.")],
) -> None:
    """Print a fresh master key entry ID:BASE64 for CHATLEDGER_MASTER_KEY (keep it secret)."""
    from ..application.key_management import new_master_key

    print(new_master_key(key_id))


@content_keys_app.command("rotate")
def rotate(
    database: DatabaseOption = None,
    create_vault: Annotated[
        bool,
        typer.Option(
            "--create-vault",
            help="Make the key vault CHATLEDGER_KEY_VAULT names if it does not exist (moving a "
            "master-key-only store to a vault); without it a missing vault is refused.",
        ),
    ] = False,
) -> None:
    """Re-wrap every content key under the current provider and master key; events are not touched."""
    from ..application.key_management import rotate_keys

    if create_vault:
        os.environ["CHATLEDGER_KEY_VAULT_CREATE"] = "1"

    with open_ledger(database, read_only=True) as ledger:
        result = rotate_keys(ledger)
    print(json.dumps(dataclasses.asdict(result)))


@content_keys_app.command("status")
def status(database: DatabaseOption = None) -> None:
    """Count wrapped and unwrapped content keys; exit 1 if a wrapped store holds unwrapped ones."""
    from ..application.key_management import key_status

    with open_ledger(database, read_only=True) as ledger:
        found = key_status(ledger)
    print(json.dumps({**dataclasses.asdict(found), "ok": found.ok}))
    if not found.ok:
        raise typer.Exit(code=1)


__all__ = ["backup_app", "content_keys_app", "register"]
