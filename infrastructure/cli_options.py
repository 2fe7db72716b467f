"""Options shared by every ``chatledger`` command."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

DatabaseOption = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--database",
        "-d",
        envvar="CHATLEDGER_DATABASE_URL",
        help="Database URL (default sqlite:///chatledger.db).",
    ),
]
