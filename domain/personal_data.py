"""Which fields of which event are personal: the one list.

A personal field is content a person gave (or that identifies what they said):
the store encrypts it under its visitor's key and an erasure destroys that key,
so it reads as its erased marker (:data:`~chatledger.domain.erasure.ERASED_VALUES`)
from then on. The encrypting mapper, the sealed decoder of the read models
and the erasure's reach are all derived from :data:`PERSONAL_FIELDS`
(``chatledger.infrastructure.personal_fields``). A new event with a personal
field adds its paths here (``tests/test_erasure_reach.py`` tests what an
erasure reaches).
"""

from __future__ import annotations

from .pydantic_aggregates import DomainEvent
from .session import Session

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

Empty values (``{}``, ``[]``, ``""``, ``null``) are not personal (the store
keeps them as they are)."""


__all__ = ["PERSONAL_FIELDS"]
