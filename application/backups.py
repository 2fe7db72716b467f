"""Backups that verify: create, restore, and prove the restored store is the one backed up.

A backup is a folder: the copy (``store.sqlite``, or one ``<table>.copy`` file
per PostgreSQL table, see :mod:`chatledger.infrastructure.backups`) and
``manifest.json``, written last (a folder without it is an unfinished backup):
the format, the time, the backend, the **newest seal of the copy**
(``ROOT@POSITION``, sealed just before the copy was taken), its head position
and event count, and each file's size and SHA-256.

- :func:`create_backup` seals what is committed, copies the store online, and
  writes the manifest;
- :func:`restore_backup` checks every file against the manifest, loads the copy
  into an empty store (a new SQLite file, or an empty PostgreSQL schema), and
  runs ``verify`` with the manifest's anchor on it: the restored log is the
  sealed log of the backup, link for link;
- :func:`verify_backup` does the same into a scratch store it then removes.

The content keys travel in the copy **wrapped** when a master key provider is
configured (docs/operations.md): restoring needs the same master key (and key
vault), and a key the vault forgot after the backup reads as erased.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from pydantic import BaseModel, ValidationError

from ..domain.errors import ConfigurationError, InvalidCommandError
from ..domain.table_prefix import DEFAULT_PREFIX
from ..infrastructure import backups as copies
from ..infrastructure.settings import Settings
from ..projections import DEFAULT_READ_MODELS
from ..projections.prefixes import prefixed_metadata
from ..projections.read_model import ReadModel
from ..projections.tracking import TRACKING
from .audit import verify_log
from .unit_of_work import UnitOfWork

MANIFEST = "manifest.json"
FORMAT = "chatledger-backup/v1"
SQLITE_FILE = "store.sqlite"


class BackupManifest(BaseModel):
    """``manifest.json`` of a backup folder."""

    format: str = FORMAT
    created_at: datetime
    backend: str
    anchor: str | None
    """The newest seal in the copy, ``ROOT@POSITION``; publish it like any anchor."""
    head: int
    events: int
    files: dict[str, dict[str, Any]]
    table_prefix: str = DEFAULT_PREFIX  # the ledger's (a restore uses it); before it, the default
    left_out: list[str] = []
    """Read-model tables not in the copy (they hold plaintext): the restore rebuilds them."""


def derived_tables(read_models: Sequence[type[ReadModel]] = (), prefix: str = DEFAULT_PREFIX) -> set[str]:
    """The tables of the read models (``read_models`` and chatledger's own) and of their
    bookkeeping (positions, failures, generations): derived from the log, never backed up."""
    metadata = [m.metadata for m in (*DEFAULT_READ_MODELS, *read_models)] + [TRACKING]
    metadata = [prefixed_metadata(md, prefix)[0] for md in metadata]
    return {t.name for md in metadata for t in md.sorted_tables}


class BackupCheck(BaseModel):
    """What :func:`restore_backup` / :func:`verify_backup` found."""

    ok: bool
    problems: list[str]
    anchor: str | None
    events: int
    head: int
    restored_to: str | None = None
    verification: str = ""

    @classmethod
    def of(
        cls, manifest: BackupManifest, problems: list[str], *, head: int | None = None, **found: Any
    ) -> BackupCheck:
        """The check of ``manifest``'s backup (``head``: the restored store's, else the
        manifest's): ok when no problem was found."""
        head = manifest.head if head is None else head
        return cls(
            ok=not problems, problems=problems, anchor=manifest.anchor, events=manifest.events,
            head=head, **found,
        )


class _Store(UnitOfWork):
    """The restored store, under the facade's name: read models track their
    position per application name, and the copy's rows are the facade's."""

    name = "ChatLedger"


def create_backup(uow: UnitOfWork, destination: str | os.PathLike[str]) -> BackupManifest:
    """Seal, copy the store online into the new folder ``destination``, write its manifest."""
    uow.scope(True, "create_backup")  # every tenant's data: the operator's ledger only
    settings: Settings = uow.settings
    folder = Path(destination)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidCommandError(
            f"Backup folder {str(folder)!r} exists and is not empty; name a new folder."
        )
    if settings.backend == "sqlite" and settings.sqlite_path is None:
        raise InvalidCommandError("An in-memory SQLite ledger has no file to back up.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidCommandError(
            f"Cannot create the backup folder {str(folder)!r} ({err.strerror})."
        ) from err
    uow.recorder.seal()  # type: ignore[attr-defined]
    derived = derived_tables(uow.read_models, settings.table_prefix)
    if settings.backend == "sqlite":
        assert settings.sqlite_path is not None
        copied = copies.sqlite_copy(settings.sqlite_path, folder / SQLITE_FILE, derived, settings.table_prefix)
    else:
        copied = copies.postgres_dump(settings, folder, derived=derived)
    manifest = BackupManifest(
        created_at=datetime.now(UTC),
        backend=settings.backend,
        anchor=copied.anchor,
        head=copied.head,
        events=copied.events,
        files=copied.files,
        table_prefix=settings.table_prefix,
        left_out=sorted(derived),
    )
    tmp = folder / f".{MANIFEST}.part"
    with tmp.open("w", encoding="utf-8") as out:
        out.write(manifest.model_dump_json(indent=2))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(source: str | os.PathLike[str]) -> tuple[Path, BackupManifest, list[str]]:
    """The backup's manifest and the problems of its files (missing, changed)."""
    folder = Path(source)
    try:
        manifest = BackupManifest.model_validate_json((folder / MANIFEST).read_bytes())
    except (OSError, ValidationError, ValueError) as err:
        raise InvalidCommandError(
            f"{str(folder)!r} is not a finished chatledger backup (no readable {MANIFEST}: {err})."
        ) from err
    if manifest.format != FORMAT:
        raise InvalidCommandError(f"Backup format {manifest.format!r} is not {FORMAT!r}.")
    problems = []
    for name, facts in manifest.files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            problems.append(f"missing file {name}")
            continue
        found = copies.file_digest(path)
        if (found["bytes"], found["sha256"]) != (facts["bytes"], facts["sha256"]):
            problems.append(f"changed file {name}: sha256 {found['sha256']} != {facts['sha256']}")
    return folder, manifest, problems


def restore_backup(
    source: str | os.PathLike[str],
    database_url: str,
    *,
    verify: bool = True,
    rebuild: bool = True,
    anchor: str | None = None,
    **settings: Any,
) -> BackupCheck:
    """Load the backup into the empty store at ``database_url``, rebuild its read models
    from the log (``rebuild``), and verify it against the manifest (``verify``) and
    ``anchor`` (``ROOT@POSITION`` published outside the backup folder: the manifest,
    next to the copy, is not authenticated; whoever can rewrite the copy can rewrite it)."""
    folder, manifest, problems = read_manifest(source)
    if problems:
        return BackupCheck.of(manifest, problems)
    target = Settings(database_url=database_url, **{"table_prefix": manifest.table_prefix, **settings})
    if target.table_prefix != manifest.table_prefix:
        raise InvalidCommandError(
            f"The backup is of the ledger with table prefix {manifest.table_prefix!r}; restore it "
            f"with that prefix, not {target.table_prefix!r} (nothing was written)."
        )
    if target.backend != manifest.backend:
        raise InvalidCommandError(
            f"A {manifest.backend} backup restores into {manifest.backend}, not {target.backend}."
        )
    if target.backend == "sqlite":
        path = target.sqlite_path
        if path is None:
            raise InvalidCommandError("Restore into a SQLite file, not :memory:.")
        if os.path.exists(path):
            raise InvalidCommandError(
                f"{path} exists; restore into a new file (nothing was written)."
            )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.restoring-{uuid4().hex[:8]}"
        copies.sqlite_place(folder / SQLITE_FILE, tmp, derived_tables(prefix=target.table_prefix))
        os.replace(tmp, path)
    else:
        if copies.postgres_event_count(target):
            raise InvalidCommandError(
                f"Schema {target.postgres_schema or 'public'!r} already holds events; restore into an "
                "empty schema (nothing was written)."
            )
        empty = _Store(target)  # creates the store's tables
        try:
            empty.projector  # noqa: B018 - and the read models'
        finally:
            empty.close()
        skipped = copies.postgres_load(target, folder, manifest.files, derived_tables(prefix=target.table_prefix))
        problems += [f"table {t} not restored: this process defines no such table" for t in skipped]
    if rebuild:
        problems += _rebuild_read_models(target)
    if not verify:
        return BackupCheck.of(manifest, problems, restored_to=database_url)
    return _check_restored(target, manifest, problems, database_url, anchor)


def _rebuild_read_models(target: Settings) -> list[str]:
    """Build the restored store's read models from its log (the backup has none): an
    erased visitor's content, whose key the provider forgot, is projected as erased."""
    restored = _Store(target)
    try:
        restored.projector.catch_up()
    except ConfigurationError as err:
        return [f"read models not rebuilt ({err}); run `chatledger projections rebuild --all`"]
    finally:
        restored.close()
    return []


def _check_restored(
    target: Settings, manifest: BackupManifest, problems: list[str], url: str, anchor: str | None
) -> BackupCheck:
    if (
        anchor is not None
        and manifest.anchor is not None
        and anchor != manifest.anchor
        and anchor.rpartition("@")[2] == manifest.anchor.rpartition("@")[2]
    ):
        problems.append(f"the manifest's anchor {manifest.anchor} is not the anchor given, {anchor}")
    restored = _Store(target)
    try:
        # An anchor published elsewhere is the check: the manifest alone is not authenticated.
        report = verify_log(restored, None, anchor or manifest.anchor)
        head = restored.projector.head()
    finally:
        restored.close()
    if report.checked != manifest.events:
        problems.append(f"{report.checked} events restored, {manifest.events} in the manifest")
    if not report.ok:
        first = report.first_break
        problems.append(
            f"verify: {report.break_count} break(s), first: {first}" if first else "verify failed"
        )
    if head != manifest.head:
        problems.append(f"head {head} != {manifest.head} in the manifest")
    return BackupCheck.of(
        manifest,
        problems,
        head=head,
        restored_to=url,
        verification=json.dumps(report.as_dict(), default=str),
    )


def verify_backup(
    source: str | os.PathLike[str],
    scratch_url: str | None = None,
    *,
    anchor: str | None = None,
    **settings: Any,
) -> BackupCheck:
    """Restore the backup into a scratch store, verify it against its manifest, remove the scratch.

    SQLite: a temporary file. PostgreSQL: a new schema in the database of
    ``scratch_url`` (required), dropped afterwards."""
    _, manifest, problems = read_manifest(source)
    if problems:
        return BackupCheck.of(manifest, problems)
    if manifest.backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="chatledger-verify-") as tmp:
            check = restore_backup(
                source, f"sqlite:///{tmp}/store.sqlite", rebuild=False, anchor=anchor, **settings
            )
        return check.model_copy(update={"restored_to": None})
    if scratch_url is None:
        raise ConfigurationError(
            "Verifying a PostgreSQL backup restores it into a scratch schema: give --database."
        )
    base = Settings(database_url=scratch_url).url()
    schema = f"chatledger_verify_{uuid4().hex[:12]}"
    url = base.update_query_dict({"schema": schema}).render_as_string(hide_password=False)
    try:
        check = restore_backup(source, url, rebuild=False, anchor=anchor, **settings)
    finally:
        copies.postgres_drop_schema(Settings(database_url=url))
    return check.model_copy(update={"restored_to": None})


__all__ = [
    "BackupCheck",
    "BackupManifest",
    "create_backup",
    "read_manifest",
    "restore_backup",
    "verify_backup",
]
