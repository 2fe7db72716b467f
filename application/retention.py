"""Retention (default off): archive long-closed sessions, drop their read-model rows.

Sessions closed (timed out or ended) before ``now - older_than`` are written,
one JSON line each (the rebuilt state and every event), to a new gzipped JSONL
file under ``archive_dir``. Then a ``Session.Archived`` event is appended to
each of them, and the read models drop their rows when they apply it: the
conversation log its messages, user memory its working row, the active-session
index its closed row. Because the drop is driven by an event, a read model
rebuilt from scratch drops exactly the rows the live one dropped. The event
log stays append-only: erasure is a separate, explicit operation.

Each batch is written and fsynced before its ``Archived`` events are appended,
so a crash in between at worst archives a session twice (in two files), never
loses it; a session already marked archived is skipped.

Each line holds the session's content encrypted under its visitor's key (the
key that encrypts the session's personal fields in the log): ``{"session_id",
"visitor_id", "kid", "$enc": base64(nonce | AES-256-GCM ciphertext)}``, the
associated data binding it to the archive format and the session id. So an
erasure, which destroys the key, shreds the archive lines too, wherever the
file was copied. :func:`read_archive` opens them with the keys still present.
A session whose visitor has no key any more (erased before it was archived) is
written as ``{"session_id", "visitor_id", "erased": true}``: nothing else.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..domain.erasure import ERASED_TEXT
from ..domain.errors import InvalidCommandError, InvalidValueError
from ..domain.session import Session
from ..domain.read_views import SessionState
from ..domain.tenancy import DEFAULT_TENANT, scoped_key
from ..domain.validation import MAX_DURATION
from ..projections.active_session_queries import closed_before
from ..projections.active_sessions import ActiveSessions
from .reads import session_events
from .sweeper import check_now
from .tenancy import tenant_handle
from .tenant_scope import stream_tenant
from .unit_of_work import UnitOfWork

logger = logging.getLogger("chatledger.retention")


class RetentionPolicy(BaseModel):
    """Archive sessions closed more than ``archive_after`` ago into ``archive_dir``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    archive_after: timedelta
    archive_dir: Path
    interval: timedelta = timedelta(hours=1)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
            )
            raise InvalidCommandError(f"Invalid retention policy ({problems}).") from err

    @field_validator("archive_after", "interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            msg = f"must be a positive duration, got {value}"
            raise ValueError(msg)
        return value

    @classmethod
    def days(cls, days: float, archive_dir: str | os.PathLike[str]) -> RetentionPolicy:
        if (
            isinstance(days, bool)
            or not isinstance(days, (int, float))
            or not math.isfinite(days)
            or not 0 < days <= MAX_DURATION.days
        ):
            raise InvalidCommandError(
                f"Retention of {days!r} days makes no sense; use a positive number of at most "
                f"{MAX_DURATION.days}."
            )
        return cls(archive_after=timedelta(days=days), archive_dir=Path(archive_dir))


@dataclass(frozen=True)
class ArchiveResult:
    archived: int
    path: Path | None
    """The file written, or None when nothing was old enough."""


def archive_closed_sessions(
    uow: UnitOfWork,
    older_than: timedelta,
    archive_dir: str | os.PathLike[str],
    *,
    now: datetime | None = None,
    batch_size: int = 1000,
    tenant: str | None = None,
) -> ArchiveResult:
    """Archive the closed sessions of ``tenant`` (None: of every tenant)."""
    check_now(now)
    if not isinstance(older_than, timedelta) or older_than <= timedelta(0):
        raise InvalidCommandError(
            f"older_than={older_than!r} must be a positive timedelta, e.g. timedelta(days=90)."
        )
    started = time.perf_counter()
    when = uow.now(now)
    cutoff = when - older_than
    projector = uow.projector
    projector.catch_up([ActiveSessions.name])
    directory = Path(archive_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file there (or above), or no permission
        raise InvalidValueError(
            "archive_dir", "folder",
            f"archive_dir={str(directory)!r} cannot be used as a folder ({err.strerror}); "
            "pass a folder this process can create or write to.",
        ) from err
    path = directory / f"sessions-{cutoff:%Y%m%dT%H%M%S}-{uuid4().hex[:8]}.jsonl.gz"
    archived = 0
    keys: dict[str, tuple[str, bytes] | None] = {}  # visitor -> (kid, key), for this run
    after: tuple[datetime, UUID] | None = None
    with gzip.open(path, "wt", encoding="utf-8") as out:
        while True:
            with projector.engine.connect() as conn:
                rows = closed_before(conn, cutoff, limit=batch_size, tenant=tenant, after=after)
            if not rows:
                break
            after = rows[-1][:2]
            sessions = [
                s for s in (_closed_session(uow, sid, tenant) for _, sid, _ in rows)
                if s is not None and s.archived_at is None
            ]
            for session in sessions:
                out.write(json.dumps(archive_line(uow, session, keys)) + "\n")
            out.flush()
            os.fsync(out.fileno())
            done = _record_archived(uow, sessions, path.name, when)
            # The index drops the closed rows when it applies the events; the
            # next query must not see this batch again.
            projector.catch_up([ActiveSessions.name])
            archived += done
    if archived == 0:
        path.unlink()
    else:
        projector.catch_up()  # every read model drops the archived sessions' rows now
    logger.info(
        "retention: archived %d sessions closed before %s to %s in %.1f ms",
        archived,
        cutoff.isoformat(),
        path if archived else "-",
        (time.perf_counter() - started) * 1000,
    )
    return ArchiveResult(archived, path if archived else None)


def _closed_session(uow: UnitOfWork, session_id: UUID, tenant: str | None) -> Session | None:
    """The closed session, if it is ``tenant``'s (None: any tenant's)."""
    session = uow.get_session(session_id, any_tenant=True)
    return session if tenant is None or session.tenant == tenant else None


def _record_archived(uow: UnitOfWork, archived: list[Session], archive: str, now: datetime) -> int:
    """Append ``Archived`` to each session (one transaction; retried on conflict)."""
    session_ids = [s.id for s in archived]

    def once() -> int:
        sessions = [uow.get_session(sid, any_tenant=True) for sid in session_ids]
        sessions = [s for s in sessions if s.archived_at is None]
        for session in sessions:
            session.record_archive(archive, at=now)
        uow.save(*sessions)
        return len(sessions)

    return uow.retrying(f"archiving {len(session_ids)} sessions", once) if session_ids else 0


ARCHIVE_AAD = "chatledger/archive/v1"


def _archive_aad(session_id: str) -> bytes:
    return json.dumps([ARCHIVE_AAD, session_id]).encode()


def archive_line(
    uow: UnitOfWork, session: Session, keys: dict[str, tuple[str, bytes] | None]
) -> dict[str, object]:
    """One session's archive line, its content encrypted under its visitor's key."""
    visitor_id = session.visitor_id
    owner = scoped_key(session.tenant, visitor_id)  # the key's owner: the visitor, in its tenant
    if owner not in keys:
        row = uow.recorder.active_key(owner)  # type: ignore[attr-defined]
        keys[owner] = (row[0], row[2]) if row is not None else None
    key = keys[owner]
    line: dict[str, object] = {"session_id": str(session.id), "visitor_id": visitor_id}
    # The events exactly as stored (personal fields encrypted), what the hash chain
    # hashes: the archive can be checked against the log's chain (log_retention).
    stored = [
        [s.originator_version, s.topic, base64.b64encode(s.state).decode()]
        for s in uow.recorder.select_events(session.id)
    ]
    if key is None:
        # No key: the visitor was erased; its content reads as erased, and is not kept
        # (the stored events hold its personal fields encrypted under the destroyed key).
        return {**line, "erased": True, "stored": stored}
    events = session_events(tenant_handle(uow, session.tenant), session.id)
    content = {
        "state": SessionState.of(session).model_dump(mode="json"),
        "events": [{"type": type(e).__qualname__, **e.model_dump(mode="json")} for e in events],
        "stored": stored,
    }
    nonce = os.urandom(12)
    plain = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    sealed = nonce + AESGCM(key[1]).encrypt(nonce, plain, _archive_aad(str(session.id)))
    return {**line, "kid": key[0], "$enc": base64.b64encode(sealed).decode()}


class ArchivedSession(BaseModel):
    """One session read back from a retention archive (:func:`read_archive`)."""

    model_config = ConfigDict(frozen=True)

    session_id: UUID
    visitor_id: str | None
    erased: bool
    """Its visitor's key was destroyed: ``state`` and ``events`` are not readable."""
    state: dict[str, Any] | str
    """The session state as archived, or ``"[erased]"``."""
    events: list[dict[str, Any]] | str
    """Every event of the session as archived, or ``"[erased]"``."""
    stored: list[tuple[int, str, str]] | None = None
    """``(version, topic, base64 of the stored bytes)`` of every event, as the log
    stored (and hash-chained) them; None in archives of earlier releases and when
    the visitor's key was destroyed after archiving."""


def read_archive(
    uow: UnitOfWork, path: str | os.PathLike[str], *, all_tenants: bool = False
) -> list[ArchivedSession]:
    """The sessions of an archive file of the ledger's tenant (``all_tenants``: every
    session in it), decrypted with the keys still in the store.

    A session whose key was destroyed (its visitor erased) reads as erased.
    Archives written before their content was encrypted (plain ``state`` and
    ``events``) are read as they are. A line that does not decrypt under its
    key was altered: :class:`InvalidCommandError` names it.
    """
    source = Path(path)
    if not source.is_file():
        msg = f"Archive {str(source)!r} does not exist; pass the path of a .jsonl.gz file."
        raise InvalidCommandError(msg)
    try:
        return _read_archive(uow, source, all_tenants)
    except (EOFError, UnicodeDecodeError, zlib.error, gzip.BadGzipFile) as err:
        msg = f"Archive {str(source)!r} is not a gzipped chatledger archive, or is truncated ({err}); pass an archive file."
        raise InvalidCommandError(msg) from err


def _not_an_archive_line(source: Path, number: int) -> InvalidCommandError:
    return InvalidCommandError(
        f"Line {number} of archive {str(source)!r} is not a chatledger archive line: the file "
        "was altered or is no archive; pass an archive file."
    )


def _parse_archive_line(source: Path, number: int, text: str) -> dict[str, Any]:
    try:
        line = json.loads(text)
    except ValueError:
        line = None
    if (
        not isinstance(line, dict)
        or not isinstance(line.get("session_id"), str)
        or ("$enc" in line and not (isinstance(line["$enc"], str) and isinstance(line.get("kid"), str)))
    ):
        raise _not_an_archive_line(source, number)
    return line


def _archived(source: Path, number: int, data: dict[str, Any]) -> ArchivedSession:
    try:
        return ArchivedSession.model_validate(data)
    except ValidationError as err:
        raise _not_an_archive_line(source, number) from err


def _theirs(uow: UnitOfWork, session_id: str) -> bool:
    """Whether the archived session is another tenant's (it is passed over, unread):
    the tenant of its stored stream; one the store no longer holds (or never did) is
    the default tenant's (the operator's). A line with no session id is left to the
    line's own checks."""
    try:
        sid = UUID(session_id)
    except ValueError:
        return False
    first = list(uow.recorder.select_events(sid, limit=1))
    tenant = stream_tenant(uow, first[0]) if first else DEFAULT_TENANT
    return tenant != uow.tenant_id


def _read_archive(uow: UnitOfWork, source: Path, all_tenants: bool = False) -> list[ArchivedSession]:
    recorder = uow.recorder
    found: dict[str, bytes | None] = {}
    sessions = []
    with gzip.open(source, "rt", encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            line = _parse_archive_line(source, number, text)
            sid = line["session_id"]
            if not all_tenants and _theirs(uow, sid):
                continue  # a store-wide archive holds every tenant's sessions: the tenant's only
            ids = {"session_id": sid, "visitor_id": line.get("visitor_id")}
            erased = {**ids, "erased": True, "state": ERASED_TEXT, "events": ERASED_TEXT}
            if "$enc" not in line:  # erased before archiving, or an archive of before encryption
                plain = {**ids, "erased": False, "state": line.get("state"), "events": line.get("events")}
                stored = {"stored": line["stored"]} if "stored" in line else {}
                sessions.append(_archived(source, number, {**(erased if line.get("erased") else plain), **stored}))
                continue
            kid = line["kid"]
            if kid not in found:
                found[kid] = recorder.key_by_id(kid)  # type: ignore[attr-defined]
            key = found[kid]
            if key is None:
                sessions.append(_archived(source, number, erased))
                continue
            try:
                sealed = binascii.a2b_base64(line["$enc"])
                content = json.loads(AESGCM(key).decrypt(sealed[:12], sealed[12:], _archive_aad(sid)))
            except (InvalidTag, binascii.Error, ValueError) as err:
                msg = (
                    f"Line {number} of archive {str(source)!r} (session {sid}) does not decrypt under "
                    f"its key {kid}: the file was altered or is not this store's."
                )
                raise InvalidCommandError(msg) from err
            sessions.append(_archived(source, number, {**ids, "erased": False, **content}))
    return sessions
