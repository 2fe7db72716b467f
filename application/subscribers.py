"""Subscribers outside the process: the log as a resumable feed of :class:`LogEvent`.

``ChatLedger.events_after(position)`` returns the events recorded after
``position`` in log order. It reads the log the way the projector does
(``ProjectionRunner.read``: notifications up to the head read first), so a reader
never passes over a notification id that commits later: on PostgreSQL every
writer holds the events table's ``EXCLUSIVE`` lock from taking its ids until it
commits (eventsourcing's ``_lock_table``), so ids commit in order and every id
at or below the head is settled; SQLite has one writer at a time. An id that is
missing (a rolled-back write) is never filled in later.

Personal fields (``domain.personal_data.PERSONAL_FIELDS``) are *sealed*
unless the caller asks for content: decoded without opening their envelopes
(``ShreddingMapper.to_sealed_event``, the read models' path) and every
non-empty one replaced by its ``SEALED_VALUES`` placeholder. With content they
are decrypted; before each batch is decoded the batch's keys are looked up in
the store again (not in the key ring's cache), so once a ``Visitor.DataErased``
event is at or below the head read, every envelope under the destroyed keys
reads as erased (``[erased]``) in that batch and every later one. A personal
field stored in plaintext (client ids and end reasons before 0.2.0) reads as
erased too once a later ``Session.ContentErased`` of its session is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic
from pydantic import AwareDatetime
from pydantic_core import from_json

from ..domain.actors import UNRECORDED, Cause
from ..domain.batching import batched
from ..domain.erasure import ERASED_VALUES
from ..domain.pydantic_aggregates import Immutable
from ..domain.session import Session
from ..infrastructure.envelopes import is_envelope, walk
from ..infrastructure.personal_fields import COMPILED_PATHS, EMPTY_VALUES, SEALED_VALUES
from ..infrastructure.envelopes import KID_PATTERN
from ..infrastructure.shredding_mapper import ShreddingMapper
from .tenant_scope import stream_tenant
from .unit_of_work import UnitOfWork

_CONTENT_ERASED = get_topic(Session.ContentErased)
MAX_FEED_BATCH = 10_000
"""The most events one ``events_after`` call returns."""


class LogEvent(Immutable):
    """One stored event as a subscriber outside the process sees it.

    ``position`` is its notification id: strictly increasing in log order, so
    ``events_after(position)`` resumes right after it. ``event_id``
    (``"<stream>:<version>"``) is stable and unique: a receiver deduplicates
    redeliveries by it. ``data`` is the event's JSON; its personal fields are
    sealed (``"[sealed]"``, ``{"$sealed": true}``) unless ``content`` is True,
    and erased content reads as erased (``"[erased]"``, ``{"$erased": true}``).
    ``actor``/``request_id``: who appended it (docs/events.md; ``"unrecorded"``
    for an event stored before actors were).
    """

    position: int
    event_id: str
    stream: str
    version: int
    type: str
    topic: str
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    content: bool
    data: dict[str, Any]
    actor: str = UNRECORDED
    request_id: str | None = None


def read_events(
    uow: UnitOfWork, position: int, limit: int, *, content: bool, tenant: str | None = None
) -> list[LogEvent]:
    """The events with a position above ``position``, at most ``limit``, in log order:
    of the streams of ``tenant`` (None: every stream). Another tenant's events are
    read past (and never decoded), so a call returns fewer than ``limit`` only at
    the head."""
    projector = uow.projector
    head = projector.head()
    found: list[LogEvent] = []
    while position < head and len(found) < limit:
        batch = projector.read(position, limit - len(found), head)
        if not batch:
            break
        position = batch[-1].id
        if tenant is not None:
            batch = [n for n in batch if stream_tenant(uow, n) == tenant]
        if batch:
            found += _decoded(uow, batch, content)
    return found


def _decoded(uow: UnitOfWork, batch: Sequence[Any], content: bool) -> list[LogEvent]:
    mapper = uow.mapper
    erased: set[int] = set()
    if content:
        _refresh_keys(mapper, batch)
        events = [mapper.to_domain_event(n) for n in batch]
        erased = _erased_plaintext(uow, batch)
    else:
        sealed = getattr(mapper, "to_sealed_event", mapper.to_domain_event)
        events = [sealed(n) for n in batch]
    cause_of = getattr(mapper, "cause_of", lambda n: Cause(UNRECORDED))
    return [_log_event(n.id, e, content, n.id in erased, cause_of(n)) for n, e in zip(batch, events)]


def _log_event(
    position: int, event: Any, content: bool, erased: bool = False, cause: Cause = Cause(UNRECORDED)
) -> LogEvent:
    cls = type(event)
    topic = get_topic(cls)
    data = event.model_dump(mode="json")
    if not content:
        _seal(data, topic)
    elif erased:
        _seal(data, topic, ERASED_VALUES)
    stream = str(event.originator_id)
    version = event.originator_version
    return LogEvent(
        position=position,
        event_id=f"{stream}:{version}",
        stream=stream,
        version=version,
        type=cls.__qualname__,
        topic=topic,
        occurred_at=event.occurred_at,
        recorded_at=event.timestamp,
        content=content,
        data=data,
        actor=cause.actor,
        request_id=cause.request_id,
    )


def _seal(data: dict[str, Any], topic: str, values: Mapping[str, Any] = SEALED_VALUES) -> None:
    """Replace every non-empty personal field by its placeholder in ``values``
    (also one stored in plain JSON, without an envelope)."""
    for path, parts in COMPILED_PATHS.get(topic, ()):
        for node, leaf, _ in walk(data, parts or [path], []):
            if node[leaf] not in EMPTY_VALUES:
                node[leaf] = values.get((parts or [path])[-1], values["value"])


def _erased_plaintext(uow: UnitOfWork, batch: Sequence[Any]) -> set[int]:
    """Positions of the events of ``batch`` that hold a personal field in
    plaintext (written before that field was encrypted, e.g. client message
    ids and end reasons before 0.2.0) and whose session's content was erased
    after them (a later ``Session.ContentErased`` in its stream): the
    envelopes' keys are gone, but those fields are still readable bytes, so
    they are blanked here as the session aggregate blanks them. Stores
    written since every personal field is encrypted cost one parse of each
    personal event of a batch, and no query."""
    plain: dict[str, list[Any]] = {}
    for n in batch:
        compiled = COMPILED_PATHS.get(n.topic)
        if compiled is None or compiled[0][0] == "state":
            continue
        data = from_json(n.state)
        if any(
            node[leaf] not in EMPTY_VALUES and not is_envelope(node[leaf])
            for path, parts in compiled
            for node, leaf, _ in walk(data, parts or [path], [])
        ):
            plain.setdefault(str(n.originator_id), []).append(n)
    erased: set[int] = set()
    for stream, notifications in plain.items():
        first = min(n.originator_version for n in notifications)
        later = [
            e.originator_version
            for e in uow.recorder.select_events(UUID(stream), gt=first)
            if e.topic == _CONTENT_ERASED
        ]
        if later:
            erased.update(n.id for n in notifications if n.originator_version < max(later))
    return erased


def _refresh_keys(mapper: Any, batch: Sequence[Any]) -> None:
    """Ask the store (not the key ring's 30 s cache) which keys of this batch
    still exist, and mark the others erased: another process may have erased
    them since this one cached them."""
    ring = getattr(mapper, "key_ring", None)
    if not isinstance(mapper, ShreddingMapper) or ring is None:
        return
    states = [n.state for n in batch if n.topic in COMPILED_PATHS]
    if not states:
        return
    kids = sorted({k.decode() for k in KID_PATTERN.findall(b"\n".join(states))})
    found: set[str] = set()
    for chunk in batched(kids):
        found.update(ring.recorder.keys_by_id(chunk))
    gone = [k for k in kids if k not in found]
    if gone:
        ring.forget((), gone)


__all__ = ["MAX_FEED_BATCH", "LogEvent", "read_events"]
