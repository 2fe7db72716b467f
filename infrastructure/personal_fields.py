"""Which fields of which event are personal, and what they read as when sealed.

The shredding mapper encrypts these paths (:mod:`chatledger.infrastructure.shredding_mapper`),
the sealed decoder leaves them closed (:mod:`chatledger.infrastructure.sealed_decoding`);
both are derived from :data:`PERSONAL_FIELDS`.
"""

from __future__ import annotations

import re
from typing import Any

from eventsourcing.utils import get_topic

from ..domain.pydantic_aggregates import DomainEvent
from ..domain.session import Session

PERSONAL_FIELDS: dict[type[DomainEvent], tuple[str, ...]] = {
    Session.Started: ("context", "carried_slots.*.value"),
    # A client message id is the caller's free text too: encrypted like the text.
    # The aggregate holds it decrypted, so a retry is still recognised (until an
    # erasure, after which it reads as None and is forgotten).
    Session.MessageReceived: ("text", "metadata", "client_message_id"),
    Session.MessageSent: ("text", "metadata", "client_message_id"),
    Session.SlotSet: ("value",),
    Session.Ended: ("reason",),
    # A snapshot is derived data: its whole state is one envelope (one decryption
    # per read, not one per message), and erasure deletes it anyway.
    Session.Snapshot: ("state",),
}
"""Dotted paths of the personal fields of each event class (``*``: every key or item).

Empty values (``{}``, ``[]``, ``""``, ``null``) are stored as they are: that a
message had no metadata is not personal, and skipping them halves the work."""

EMPTY_VALUES: tuple[Any, ...] = ({}, [], "", None)

PATHS_BY_TOPIC = {get_topic(cls): paths for cls, paths in PERSONAL_FIELDS.items()}

SEALED_TEXT = "[sealed]"
SEALED_VALUES: dict[str, Any] = {
    "text": SEALED_TEXT,
    "metadata": {"$sealed": True},
    "context": {"client_metadata": {"$sealed": True}},
    "value": {"$sealed": True},
    "client_message_id": None,
    "reason": SEALED_TEXT,
}
"""What a personal field reads as in an event decoded with
:meth:`~chatledger.infrastructure.shredding_mapper.ShreddingMapper.to_sealed_event` (envelope left closed, no key looked up).
Only for consumers that never read personal content (see
``ReadModel.personal_fields``); they must never be stored or shown."""

PLAIN_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
COMPILED_PATHS: dict[str, tuple[tuple[str, list[str] | None], ...]] = {
    topic: tuple(
        (path, None if PLAIN_FIELD.fullmatch(path) else path.split(".")) for path in paths
    )
    for topic, paths in PATHS_BY_TOPIC.items()
}
"""Per topic: each personal path, with its parts if it is not one top-level field."""
TOP_LEVEL_FIELDS: dict[str, tuple[str, ...]] = {
    topic: tuple(path for path, _ in compiled)
    for topic, compiled in COMPILED_PATHS.items()
    if all(parts is None for _, parts in compiled) and compiled[0][0] != "state"
}
"""Topics whose personal fields are all top-level (messages, slots): decoded by
the mapper's straight-line fast path, the bulk of a rebuild."""
