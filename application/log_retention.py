"""Log retention: remove archived sessions' events from the live log (issue 17).

:func:`remove_archived_sessions` removes the events of sessions that retention
archived (``Session.Archived``), that closed before the cut-off and whose every
event is within the sealed range. Per batch:

1. the sessions are written once more, one line each, to a new archive file
   ``removed-….jsonl.gz`` (the format of :mod:`.retention`, with the events
   exactly as stored, encrypted under the visitor's key), fsynced, read back,
   and each line is checked against the log's hash chain (the recomputed
   ``event_hash`` of the last version must be the chain's): a session the file
   does not provably hold is kept;
2. one transaction appends a ``RetentionRecord.Removed`` event naming each
   session (version range, positions, head hash, the archive file, its analytics
   facts) and deletes the sessions' events and snapshots; a session changed
   meanwhile fails the transaction (conflict) and the batch is retried without it.

The hash rows of the removed events stay: they are the seals' leaves, so the
seals and any anchor published before still verify; ``verify`` counts them as
removed by retention (the record names them) instead of as missing events. The
content keys stay too (the archive is encrypted under them; an erasure destroys
them and so shreds the archive). :func:`check_archives` checks the archive files
the records name against the records.
"""

from __future__ import annotations

import binascii
import gzip
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.utils import get_topic
from sqlalchemy import select

from ..domain.errors import InvalidCommandError
from ..domain.retention import RemovedSession, RetentionRecord, SessionSummary
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT
from ..infrastructure.hashchain import GENESIS, ChainBreak, VerificationReport, event_hash, removed_sessions
from ..infrastructure.removal import RemovalConflictError
from ..infrastructure.sealing import Anchor
from ..projections.analytics import sessions_table
from ..projections.prefixes import on
from .audit import chained
from .repository import LedgerRepository
from .retention import archive_line, read_archive
from .sweeper import check_now
from .unit_of_work import UnitOfWork

logger = logging.getLogger("chatledger.retention")
ARCHIVED_TOPIC = get_topic(Session.Archived)


@dataclass(frozen=True)
class RemovalResult:
    removed_sessions: int
    removed_events: int
    paths: list[Path]
    """The archive files written (one per batch; together they hold every removed session)."""
    kept: dict[str, int] = field(default_factory=dict)
    """Archived sessions old enough that were kept, by reason."""

ARCHIVE_NAME = re.compile(r"removed-[0-9T]{15}-[0-9a-f]{8}-[0-9]{4}\.jsonl\.gz")
"""The name of an archive file a removal writes (a bare name: no folder)."""


def stored_head(session_id: UUID, stored: Sequence[Sequence[Any]] | None) -> tuple[int, bytes] | None:
    """``(last version, event_hash of it)`` recomputed from an archive line's stored
    events, or None if they are absent or not versions 1..n."""
    if not stored:
        return None
    prev = GENESIS
    try:
        for expected, (version, topic, state) in enumerate(stored, 1):
            if version != expected:
                return None
            prev = event_hash(prev, session_id, version, topic, binascii.a2b_base64(state))
    except (ValueError, TypeError, binascii.Error):
        return None
    return len(stored), prev


def remove_archived_sessions(
    uow: UnitOfWork,
    older_than: timedelta,
    archive_dir: str | os.PathLike[str],
    *,
    now: datetime | None = None,
    batch_size: int = 500,
) -> RemovalResult:
    """Remove from the live log the archived sessions closed before ``now - older_than``."""
    check_now(now)
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise InvalidCommandError(
            f"older_than={older_than!r} must be a positive timedelta, e.g. timedelta(days=90)."
        )
    if uow.tenant_id != DEFAULT_TENANT:
        raise InvalidCommandError("Removing events from the log acts on every tenant: the operator's ledger does it.")
    started = time.perf_counter()
    when = uow.now(now)
    cutoff = when - older_than
    recorder = chained(uow.recorder)
    uow.projector.catch_up()  # the analytics rows hold every event of the sessions
    recorder.seal()
    newest = recorder.newest_anchor()
    sealed_through = Anchor.parse(newest).position if newest else 0
    directory = Path(archive_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidCommandError(f"archive_dir={str(directory)!r} cannot be used as a folder ({err.strerror}).") from err
    run = f"removed-{cutoff:%Y%m%dT%H%M%S}-{uuid4().hex[:8]}"
    kept: dict[str, int] = {}
    candidates = recorder.streams_with_topic(ARCHIVED_TOPIC)
    removed = events = 0
    paths: list[Path] = []
    keys: dict[str, tuple[str, bytes] | None] = {}
    for i in range(0, len(candidates), batch_size):
        batch = _eligible(uow, candidates[i : i + batch_size], cutoff, sealed_through, kept)
        if not batch:
            continue
        path = directory / f"{run}-{len(paths) + 1:04d}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as out:
            for session, _ in batch.values():
                out.write(json.dumps(archive_line(uow, session, keys)) + "\n")
        with path.open("rb") as written:
            os.fsync(written.fileno())
        n_sessions, n_events = _remove(uow, batch, path, kept, sealed_through, when)
        if n_sessions:
            paths.append(path)
        else:
            path.unlink()
        removed += n_sessions
        events += n_events
    uow.projector.catch_up()
    logger.info(
        "retention: removed %d events of %d archived sessions closed before %s (%d archive files) in %.1f ms; kept %s",
        events, removed, cutoff.isoformat(), len(paths), (time.perf_counter() - started) * 1000, kept,
    )
    return RemovalResult(removed, events, paths, kept)


def _keep(kept: dict[str, int], reason: str) -> None:
    kept[reason] = kept.get(reason, 0) + 1


def _eligible(
    uow: UnitOfWork, ids: Sequence[UUID], cutoff: datetime, sealed_through: int, kept: dict[str, int]
) -> dict[UUID, tuple[Session, dict[int, int]]]:
    """The sessions of ``ids`` to remove now, with ``version -> position`` of their events."""
    found: dict[UUID, tuple[Session, dict[int, int]]] = {}
    recorder = chained(uow.recorder)
    for sid in ids:
        session = uow.get_session(sid, any_tenant=True)
        if session.archived_at is None or session.closed_at is None or session.closed_at >= cutoff:
            continue
        positions = recorder.notification_ids(sid)
        if max(positions.values()) > sealed_through:
            _keep(kept, "not sealed yet")
            continue
        found[sid] = (session, positions)
    return found


def _remove(
    uow: UnitOfWork,
    batch: dict[UUID, tuple[Session, dict[int, int]]],
    path: Path,
    kept: dict[str, int],
    sealed_through: int,
    when: datetime,
) -> tuple[int, int]:
    """Check the archive's lines of ``batch`` against the chain, then record and
    remove the sessions that agree (one transaction; retried without a session
    that changed)."""
    recorder = chained(uow.recorder)
    archived = {s.session_id: s for s in read_archive(uow, path, all_tenants=True)}
    summaries = _summaries(uow, list(batch))
    entries: dict[UUID, RemovedSession] = {}
    for sid, (session, positions) in batch.items():
        line = archived.get(sid)
        hashes = recorder.hash_rows(sid)
        last = max(positions)
        chain_head = hashes.get(positions[last], (b"", b""))[0]
        head = stored_head(sid, line.stored if line is not None else None)
        if head != (last, chain_head):
            _keep(kept, "archive does not match the log")
            continue
        entries[sid] = RemovedSession(
            session_id=sid, tenant=session.tenant, archive=path.name, last_version=last,
            first_position=min(positions.values()), last_position=max(positions.values()),
            head_hash=chain_head.hex(), summary=summaries.get(sid),
        )
    snapshot_table = getattr(getattr(uow.snapshots, "recorder", None), "events_table_name", None)
    for _attempt in range(3):
        if not entries:
            return 0, 0
        record = RetentionRecord.removed(list(entries.values()), sealed_through=sealed_through, at=when)
        stored = [uow.mapper.to_stored_event(e) for e in record.collect_events()]
        versions = {sid: e.last_version for sid, e in entries.items()}
        try:
            recorder.remove_sessions(stored, versions, snapshot_table)
        except RemovalConflictError as err:
            for sid in err.changed:
                entries.pop(sid, None)
                _keep(kept, "changed while being removed")
            continue
        repository = uow.repository
        assert isinstance(repository, LedgerRepository)
        for sid, entry in entries.items():
            repository.evict(sid, entry.last_version)
        return len(entries), sum(versions.values())
    return 0, 0


def _summaries(uow: UnitOfWork, ids: list[UUID]) -> dict[UUID, SessionSummary]:
    """The analytics facts of the sessions (those the analytics read model holds)."""
    if "analytics" not in uow.projector.projections:
        return {}
    fields = set(SessionSummary.model_fields)
    with uow.projector.engine.connect() as conn:
        table = on(conn, sessions_table)
        rows = conn.execute(select(table).where(table.c.session_id.in_([str(s) for s in ids]))).mappings()
        return {
            UUID(r["session_id"]): SessionSummary.model_validate({k: v for k, v in r.items() if k in fields})
            for r in rows
        }


# --------------------------------------------------------------------------- checking


@dataclass
class ArchiveCheck:
    """What :func:`check_archives` found for the sessions the log's records name."""

    sessions: int = 0
    agreed: int = 0
    erased: int = 0
    """Their visitor's key was destroyed after archiving: the line cannot be opened."""
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"sessions": self.sessions, "agreed": self.agreed, "erased": self.erased, "problems": self.problems}


def check_archives(
    uow: UnitOfWork, archive_dir: str | os.PathLike[str], report: VerificationReport | None = None
) -> ArchiveCheck:
    """Check every session the log's retention records name against its line in
    the archive file they name (under ``archive_dir``): the stored events of the
    line must hash to the record's head hash. A problem is also added to
    ``report`` as an ``archive mismatch`` break."""
    directory = Path(archive_dir)
    if not directory.is_dir():
        raise InvalidCommandError(f"Archive folder {str(directory)!r} does not exist; pass the retention archive folder.")
    recorder = chained(uow.recorder)
    records = removed_sessions(recorder.removal_records())
    by_file: dict[str, list[UUID]] = {}
    for sid, gone in records.items():
        by_file.setdefault(gone.archive, []).append(sid)
    check = ArchiveCheck()
    for name, sids in sorted(by_file.items()):
        source = directory / name
        if ARCHIVE_NAME.fullmatch(name) is None:  # a record's name is data: never a path out of the folder
            source = directory / "removed-(not a bare archive name)"
        lines = {s.session_id: s for s in read_archive(uow, source, all_tenants=True)} if source.is_file() else {}
        for sid in sids:
            check.sessions += 1
            gone = records[sid]
            line = lines.get(sid)
            problem = None
            if line is None:
                problem = f"session {sid} removed by retention is not in archive {name}" + (
                    "" if source.is_file() else " (no such file)"
                )
            elif line.stored is None and line.erased:
                check.erased += 1
                continue
            elif stored_head(sid, line.stored) != (gone.last_version, bytes.fromhex(gone.head_hash)):
                problem = f"session {sid} in archive {name} does not hash to the chain its retention record names"
            if problem is None:
                check.agreed += 1
                continue
            check.problems.append(problem)
            if report is not None:
                report.add(ChainBreak("archive mismatch", 0, str(sid), gone.last_version, problem))
    return check


__all__ = ["ArchiveCheck", "RemovalResult", "check_archives", "remove_archived_sessions", "stored_head"]
