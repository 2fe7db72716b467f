"""What tenant a stored stream belongs to, for the reads that go to the log without
loading an aggregate (see :mod:`chatledger.domain.tenancy`, docs/architecture.md "Tenants").

The tenant is in a stream's first event (``Session.Started``, ``Visitor.Registered``),
never encrypted, so it is read from the stored bytes without decoding the event.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from ..domain.errors import UnknownSessionError
from ..domain.session import Session
from ..domain.tenancy import DEFAULT_TENANT
from ..domain.visitor import Visitor
from .unit_of_work import UnitOfWork, as_uuid

STARTED_TOPIC = get_topic(Session.Started)
TENANTED_TOPICS = (STARTED_TOPIC, get_topic(Visitor.Registered))  # first events, with the tenant


def stored_tenant(uow: UnitOfWork, first: Any) -> str:
    """The tenant recorded in a stored first event: read from its JSON, or, when the
    store's mapper compresses or encrypts whole events (eventsourcing's
    ``COMPRESSOR_TOPIC`` / ``CIPHER_TOPIC``), from the event the mapper decodes.
    An event neither can read (altered) is the default tenant's, the operator's, to
    verify."""
    try:
        return str(json.loads(first.state).get("tenant", DEFAULT_TENANT))
    except (ValueError, AttributeError):
        pass
    try:
        return str(getattr(uow.mapper.to_domain_event(first), "tenant", DEFAULT_TENANT))
    except Exception:  # noqa: BLE001 -- altered bytes: what verification reports
        return DEFAULT_TENANT


def stream_tenant(uow: UnitOfWork, notification: Any) -> str:
    """The tenant of the stream a stored event (a notification) belongs to: read
    from the stream's first event (the tenant is never encrypted), remembered by
    the root ledger; a stream of no tenant (no ``Started``/``Registered`` first)
    is the default tenant's."""
    known: dict[UUID, str] = uow._root.__dict__.setdefault("_stream_tenants", {})
    stream = UUID(str(notification.originator_id))
    tenant = known.get(stream)
    if tenant is not None:
        return tenant
    first = notification
    if notification.originator_version != 1:
        found = list(uow.recorder.select_events(stream, limit=1))
        first = found[0] if found else None
    tenant = DEFAULT_TENANT
    if first is not None and first.topic in TENANTED_TOPICS:
        tenant = stored_tenant(uow, first)
    if len(known) >= 100_000:
        known.clear()  # a bounded memo: a stream's tenant never changes
    known[stream] = tenant
    return tenant


def own_session(uow: UnitOfWork, session_id: UUID | str, *, any_aggregate: bool = False) -> UUID:
    """The id of a session of this ledger's tenant, checked on its stored first
    event alone (the tenant is never encrypted), for reads that go to the log
    without loading the session: :class:`UnknownSessionError` for another
    tenant's session, exactly as for one that does not exist.

    ``any_aggregate`` (``verify``): a visitor's stream of the tenant passes too,
    and so does an id with no stored event (its chain rows may remain: the
    verification reports the deletion)."""
    sid = as_uuid(session_id)
    first = list(uow.recorder.select_events(sid, limit=1))
    if not first:
        if any_aggregate and uow.tenant_id == DEFAULT_TENANT:
            return sid
        raise UnknownSessionError(session_id)
    if first[0].topic != STARTED_TOPIC and not any_aggregate:
        raise UnknownSessionError(session_id)
    if first[0].topic not in TENANTED_TOPICS or first[0].originator_version != 1:
        # No tenant to read (an aggregate of no tenant, or its first events were
        # deleted: the verification says so): the default tenant's (the operator's).
        if uow.tenant_id != DEFAULT_TENANT:
            raise UnknownSessionError(session_id)
        return sid
    if stored_tenant(uow, first[0]) != uow.tenant_id:
        raise UnknownSessionError(session_id)
    return sid


__all__ = ["STARTED_TOPIC", "TENANTED_TOPICS", "own_session", "stored_tenant", "stream_tenant"]
