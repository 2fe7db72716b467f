"""Options and small helpers shared by every ``chatledger`` command."""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Optional

import typer


if TYPE_CHECKING:  # imported where used: a usage error or --help loads no store code
    from .. import ChatLedger

OptionalText = Optional[str]  # noqa: UP045 - typer needs Optional here
"""An option's type when it may be left out (``None``)."""

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]

DatabaseOption = Annotated[
    OptionalText,
    typer.Option(
        "--database",
        "-d",
        envvar="CHATLEDGER_DATABASE_URL",
        help="Database URL (default sqlite:///chatledger.db).",
    ),
]


def exactly_one(ctx: typer.Context, **options: object) -> None:
    """Refuse the command (usage error) unless exactly one of ``options`` is given."""
    if sum(value is not None for value in options.values()) != 1:
        ctx.fail(f"Give exactly one of {' or '.join('--' + name for name in options)}.")


def parse_time(value: str) -> datetime:
    """An ISO-8601 option value (naive means UTC); a usage error otherwise.

    Pass it as ``typer.Option(parser=parse_time)`` so a bad value is reported
    as a usage error of that option (exit status 2)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise typer.BadParameter(f"{value!r} is not an ISO-8601 time (e.g. 2026-03-02T14:03:00Z)") from err
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


SinceOption = Annotated[
    Optional[datetime],  # noqa: UP045
    typer.Option("--since", parser=parse_time, metavar="TIME", help="ISO time, inclusive."),
]
UntilOption = Annotated[
    Optional[datetime],  # noqa: UP045
    typer.Option("--until", parser=parse_time, metavar="TIME", help="ISO time, exclusive."),
]


def output_file(value: Path) -> Path:
    """``--out`` callback: the folder must exist (a usage error otherwise)."""
    folder = value.parent if str(value.parent) else Path(".")
    if not folder.is_dir():
        raise typer.BadParameter(f"the folder {folder} does not exist; create it or choose another path.")
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; name a file to write.")
    return value


def cli_actor(actor: str | None) -> AbstractContextManager[object]:
    """The actor of this command's events: ``--actor``, else ``operator:<login name>``
    (the worker's sweeps are ``worker:sweeper``; the service's requests their key's)."""
    from ..domain.actors import acting_as, safe_token

    if actor is None:
        try:
            login = getpass.getuser()
        except (KeyError, OSError):
            login = "unknown"
        actor = f"operator:{safe_token(login)}"
    return acting_as(actor)


@contextmanager
def cli_table_prefix(prefix: str) -> Iterator[None]:
    """``--prefix``: ``CHATLEDGER_TABLE_PREFIX`` while the command runs (its settings read it)."""
    before = os.environ.get("CHATLEDGER_TABLE_PREFIX")
    os.environ["CHATLEDGER_TABLE_PREFIX"] = prefix
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CHATLEDGER_TABLE_PREFIX", None)
        else:
            os.environ["CHATLEDGER_TABLE_PREFIX"] = before


def open_ledger(database: str | None, *, read_only: bool = False) -> ChatLedger:
    """The ledger at ``database``, for the tenant ``CHATLEDGER_TENANT`` names (default:
    ``default``); a read-only command refuses a missing SQLite file."""
    if read_only:
        from ..application.bootstrap import require_existing_store

        require_existing_store(database)
    from .. import ChatLedger

    return ChatLedger.open(database, tenant=os.environ.get("CHATLEDGER_TENANT", "default"))


@contextmanager
def atomic_output(out: Path, *, newline: str | None = None) -> Iterator[IO[str]]:
    """A text file that appears at ``out`` only if the block succeeds.

    It is written next to ``out`` under a temporary name and renamed over it at
    the end; on any error the temporary file is removed and ``out`` (absent, or
    an older file) is left as it was.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as fh:
            yield fh
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
