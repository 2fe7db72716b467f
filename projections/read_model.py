"""The bases of chatledger's read models, and what the runner asks of them
(the topics they handle, the personal fields they read)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import singledispatchmethod
from typing import Any, ClassVar

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic
from sqlalchemy import MetaData

from ..domain.pydantic_aggregates import DomainEvent
from .view import SQLView


class ReadModel(Projection[SQLView]):
    """Base of chatledger's projections.

    Subclasses set ``name`` and ``metadata`` (their SQLAlchemy tables) and
    register handlers on :meth:`process_event` with ``@process_event.register``.
    Handlers write through ``self.view.conn`` and may buffer rows, flushing them
    in :meth:`flush`, which the runner calls once per batch, before the
    tracking record.
    """

    metadata: ClassVar[MetaData]
    deferred_indexes: ClassVar[tuple[str, ...]] = ()
    """Secondary indexes only reads use (never the handlers' own lookups or
    updates): a rebuild drops them and builds them once at the end, instead
    of inserting a million random keys into them one batch at a time."""

    personal_fields: ClassVar[tuple[type, ...] | None] = None
    """Event classes whose personal (encrypted) fields this read model reads;
    ``None``: any. Events of other classes may reach it *sealed*: decoded
    without opening their envelopes, each personal field replaced by a
    placeholder (``ShreddingMapper.to_sealed_event``), which skips the
    decryption a message costs. Declare ``()`` only if no handler reads a
    personal field (see ``domain/personal_data.py``, ``PERSONAL_FIELDS``).
    Not inherited: a subclass must declare it again, or it gets everything opened."""

    supports_shadow_rebuild: ClassVar[bool] = False
    """Whether every handler writes through ``self.view.table(...)`` (never a
    module-level table directly), so the read model can be rebuilt into new
    tables while the live ones serve (:meth:`ProjectionRunner.rebuild_shadow`).
    Not inherited, like :attr:`personal_fields`: a subclass that adds
    handlers declares it again."""

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Events a read model does not handle are skipped (but still tracked)."""

    def process_batch(self, application_name: str, items: Sequence[tuple[int, Any]]) -> None:
        """Apply ``(notification id, event)`` pairs in log order. The default
        calls :meth:`process_event` with a ``Tracking`` per event; read models
        that do not need one override this."""
        for notification_id, event in items:
            self.process_event(event, Tracking(application_name, notification_id))

    def prepare(self, events: Sequence[Any]) -> None:
        """Called with a batch's events before they are processed, inside its
        transaction: prefetch the rows the batch needs in a few queries."""

    def flush(self) -> None:
        """Write buffered rows; called inside the batch's transaction."""

    def discard(self) -> None:
        """Forget per-batch state (caches, buffered rows). The runner calls it
        before every batch and after a batch failed, so a handler never sees
        state from a rolled-back transaction."""


class HandlerTableReadModel(ReadModel):
    """A read model whose handlers are a table ``{event class: function}``.

    Subclasses set :attr:`handlers` (and usually ``topics`` from its keys); a
    handler is called as ``handler(self, event)``, or ``handler(self, event,
    notification_id)`` if :attr:`handlers_take_position` is set. A batch is
    dispatched with one dict look-up per event and no ``Tracking`` objects,
    unless a subclass overrides :meth:`process_event` itself, which is then
    called for every event as usual."""

    handlers: ClassVar[dict[type, Any]] = {}
    handlers_take_position: ClassVar[bool] = False

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        handler = self.handlers.get(type(domain_event))
        if handler is None:
            return
        if self.handlers_take_position:
            handler(self, domain_event, tracking.notification_id)
        else:
            handler(self, domain_event)

    def process_batch(self, application_name: str, items: Sequence[tuple[int, Any]]) -> None:
        if type(self).process_event is not HandlerTableReadModel.process_event:  # a subclass's own
            return super().process_batch(application_name, items)
        handlers = self.handlers
        if self.handlers_take_position:
            for notification_id, event in items:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(self, event, notification_id)
            return
        for _, event in items:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(self, event)


def topic_set(projection: ReadModel) -> frozenset[str] | None:
    """The topics ``projection`` handles, or ``None`` for all of them."""
    topics = projection.topics
    return frozenset(topics) if topics else None


def personal_set(projection: ReadModel) -> frozenset[str] | None:
    """Topics whose personal fields ``projection`` reads, or ``None`` for all."""
    # Only a class's own declaration counts: a subclass that adds handlers
    # (which may read personal fields) gets everything opened unless it
    # declares again what it reads.
    classes = type(projection).__dict__.get("personal_fields")
    return None if classes is None else frozenset(get_topic(c) for c in classes)


def batch_ids(
    events: Sequence[Any], started: type[DomainEvent], registered: type[DomainEvent]
) -> tuple[list[str], list[str]]:
    """Session and visitor aggregate ids a batch touches but did not create
    (each once: a batch has several events per aggregate)."""
    new = {e.originator_id for e in events if isinstance(e, (started, registered))}
    sessions: dict[Any, None] = {}
    visitors: dict[Any, None] = {}
    kinds: dict[type, dict[Any, None]] = {}
    for e in events:
        oid = e.originator_id
        if oid in new:
            continue
        cls = type(e)
        ids = kinds.get(cls)
        if ids is None:
            ids = kinds[cls] = visitors if cls.__qualname__.startswith("Visitor.") else sessions
        ids[oid] = None
    return [str(oid) for oid in sessions], [str(oid) for oid in visitors]
