"""How the store treats the personal fields, derived from the domain's list.

Which fields of which event are personal is the domain's rule
(:data:`chatledger.domain.personal_data.PERSONAL_FIELDS`, re-exported here).
From it: the shredding mapper encrypts those paths
(:mod:`chatledger.infrastructure.shredding_mapper`), the sealed decoder leaves
them closed (:mod:`chatledger.infrastructure.sealed_decoding`), by topic
(:data:`PATHS_BY_TOPIC`, :data:`COMPILED_PATHS`, :data:`TOP_LEVEL_FIELDS`); and
what each reads as when sealed (:data:`SEALED_VALUES`).
"""

from __future__ import annotations

import re
from typing import Any

from eventsourcing.utils import get_topic

from ..domain.personal_data import PERSONAL_FIELDS as PERSONAL_FIELDS

EMPTY_VALUES: tuple[Any, ...] = ({}, [], "", None)
"""Stored as they are, not encrypted: that a message had no metadata is not
personal, and skipping them halves the work."""

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
