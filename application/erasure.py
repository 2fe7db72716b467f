"""Erasure: forget a person by destroying their content keys (crypto-shredding).

See :meth:`chatledger.ChatLedger.erase` and docs/compliance.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID, uuid4

from eventsourcing.utils import get_topic

from ..domain.erasure import ErasureReceipt
from ..domain.errors import ConfigurationError, InvalidCommandError, UnknownSubjectError
from ..domain.session import Session
from ..domain.visitor import Visitor
from ..infrastructure.ledger_recorders import as_ledger_recorder
from ..infrastructure.shredding_mapper import ShreddingMapper
from .repository import LedgerRepository
from .unit_of_work import UnitOfWork

LINK_TOPIC = get_topic(Visitor.IdentityLinked)
LOG = logging.getLogger("chatledger.erasure")


class ErasureIncompleteError(ConfigurationError):
    """The erasure committed (the keys are gone from the database, the read models and
    caches are blanked), but the key provider could not forget the keys: a backup taken
    before it may still open them until ``content-keys rotate`` repeats the forget."""

    def __init__(self, receipt: ErasureReceipt, cause: Exception) -> None:
        super().__init__(
            f"Erasure {receipt.erasure_id} committed, but the key provider could not forget "
            f"its keys ({cause}); run `chatledger content-keys rotate` to repeat it."
        )
        self.receipt = receipt


def visitors_of_user(uow: UnitOfWork, user_id: str) -> list[Visitor]:
    """Every visitor of the ledger's tenant ever linked to ``user_id``, found in
    the log (not a read model)."""
    ids: list[UUID] = []
    position = 0
    while True:
        batch = uow.recorder.select_notifications(
            start=position, limit=1000, topics=[LINK_TOPIC], inclusive_of_start=False
        )
        for notification in batch:
            # Decoded by the mapper, so an IdentityLinked of any version is upcast.
            event = uow.mapper.to_domain_event(notification)
            if isinstance(event, Visitor.IdentityLinked) and event.user_id == user_id:
                ids.append(UUID(str(notification.originator_id)))
        if len(batch) < 1000:
            break
        position = batch[-1].id
    visitors: list[object] = [uow.repository.get(i) for i in dict.fromkeys(ids)]
    return [
        v for v in visitors
        if isinstance(v, Visitor) and v.user_id == user_id and v.tenant == uow.tenant_id
    ]


def count_encrypted_events(uow: UnitOfWork, aggregate_ids: Iterable[UUID], key_ids: Iterable[str]) -> int:
    markers = [f'"kid":"{kid}"'.encode() for kid in key_ids]
    if not markers:
        return 0
    return sum(
        1
        for aggregate_id in aggregate_ids
        for stored in uow.recorder.select_events(aggregate_id)
        if any(m in stored.state for m in markers)
    )


def erase_subject(
    uow: UnitOfWork, *, user_id: str | None, visitor_id: str | None, at: datetime | None
) -> ErasureReceipt:
    if (user_id is None) == (visitor_id is None):
        raise InvalidCommandError("Erase either a user_id or a visitor_id (exactly one).")
    recorder = as_ledger_recorder(uow.recorder)
    if recorder is None:
        raise ConfigurationError("This ledger's recorder keeps no content keys; open it with ChatLedger.open().")

    def once() -> tuple[ErasureReceipt, list[Visitor], list[Session]]:
        now = uow.now(at)
        if visitor_id is not None:
            visitor = uow.get_visitor(visitor_id)
            if visitor is None:
                raise UnknownSubjectError("visitor", visitor_id)
            visitors = [visitor]
        else:
            assert user_id is not None
            visitors = visitors_of_user(uow, user_id)
            if not visitors:
                raise UnknownSubjectError("user", user_id)
        session_ids = [sid for v in visitors for sid in v.session_ids]
        # A session log retention removed is None: its archive lines are shredded with the keys.
        sessions = [s for s in (uow.kept_session(sid) for sid in session_ids) if s is not None]
        # Keys are read after the aggregates: a write that creates a key and
        # commits later appended to one of them, so this erasure conflicts and
        # is retried, and the receipt names every key it destroys.
        key_ids = recorder.key_ids_of([v.key_owner for v in visitors])
        receipt = ErasureReceipt(
            erasure_id=uuid4(),
            subject="user" if user_id is not None else "visitor",
            user_id=user_id if user_id is not None else visitors[0].user_id,
            visitor_ids=tuple(v.visitor_id for v in visitors),
            session_ids=tuple(session_ids),
            key_ids=tuple(key_ids),
            events_affected=count_encrypted_events(uow, session_ids, key_ids),
            erased_at=now,
            tenant=uow.tenant_id,
        )
        for visitor in visitors:
            visitor.record_erasure(receipt)
        for session in sessions:
            session.erase_content(receipt.erasure_id, at=now)
        # One transaction: the erasure record, every session's ContentErased (so
        # cached copies in other processes blank themselves when they catch up,
        # and a writer holding a stale copy conflicts), and the key destruction.
        uow.save(*visitors, *sessions)
        return receipt, visitors, sessions

    what = f"erase() of {'user ' + repr(user_id) if user_id else 'visitor ' + repr(visitor_id)}"
    receipt, visitors, sessions = uow.retrying(what, once)
    uow.counters.add("erasures")
    # Derived copies of the plaintext: this process's caches and the snapshots.
    if isinstance(uow.mapper, ShreddingMapper) and uow.mapper.key_ring is not None:
        uow.mapper.key_ring.forget(receipt.key_owners, receipt.key_ids)
    forget_failed: Exception | None = None
    if recorder.key_provider is not None:
        # Outside the database too: a backup taken before now cannot open these keys any more.
        try:
            recorder.key_provider.forget(list(receipt.key_ids))
        except Exception as err:  # noqa: BLE001 - the cleanup below must still run
            forget_failed = err
            LOG.error(
                "erasure %s committed, but the key provider could not forget its keys (%s): "
                "run `chatledger content-keys rotate`, which repeats it",
                receipt.erasure_id, err,
            )
    repository = uow.repository
    assert isinstance(repository, LedgerRepository)
    for aggregate in (*sessions, *visitors):
        repository.evict(aggregate.id, aggregate.version)
    if uow.snapshots is not None:
        table = getattr(uow.snapshots.recorder, "events_table_name", None)
        if table:
            recorder.delete_snapshots(table, list(receipt.session_ids))
    if uow.read_models:
        # Read models copy personal fields; they blank them on Visitor.DataErased.
        uow.projector.catch_up()
        # A shadow rebuild left unfinished holds copies no catch-up reaches: dropped.
        uow.projector.cancel_shadows()
    recorder.purge_free_space()
    if forget_failed is not None:
        raise ErasureIncompleteError(receipt, forget_failed) from forget_failed
    return receipt


__all__ = ["LINK_TOPIC", "ErasureIncompleteError", "count_encrypted_events", "erase_subject", "visitors_of_user"]
