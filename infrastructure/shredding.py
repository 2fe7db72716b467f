"""Crypto-shredding: personal fields are stored encrypted under a per-visitor key.

The :class:`ShreddingMapper` replaces each personal field of an event (see
:data:`PERSONAL_FIELDS`) with an envelope ``{"$enc": base64(nonce|ciphertext),
"kid": key id}`` made with AES-256-GCM (``cryptography``), so the rest of the
event (ids, times, types, slot names, counts) stays readable JSON. The key
belongs to the visitor whose conversation it is: ``Session.Started`` names the
visitor, and the mapper records ``session id -> visitor`` in
``chatledger_key_subjects`` before the first event of the session is stored, so
every later event (and snapshot) of that session finds the same subject.

Erasure destroys the visitor's key rows (in the transaction that appends the
``Visitor.DataErased`` event, see :mod:`chatledger.infrastructure.recorders`).
From then on each envelope under that key decodes to an explicit marker
(:data:`ERASED_VALUES`), so replay, projections and exports show "erased"
while the stored bytes, and so the hash chains, stay exactly as they were.

Keys never leave this module and the recorders: they are not logged, not
exported and not part of any ``repr``.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from chatledger.domain.erasure import ERASED_VALUES
from chatledger.domain.model import DomainEvent
from chatledger.domain.session import Session
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from .persistence import PydanticMapper
from .recorders import KeyRow, PostgresLedgerRecorder, SQLiteLedgerRecorder

PERSONAL_FIELDS: dict[type[DomainEvent], tuple[str, ...]] = {
    Session.Started: ("context", "carried_slots.*.value"),
    Session.MessageReceived: ("text", "metadata"),
    Session.MessageSent: ("text", "metadata"),
    Session.SlotSet: ("value",),
    # A snapshot is derived data: its whole state is one envelope (one decryption
    # per read, not one per message), and erasure deletes it anyway.
    Session.Snapshot: ("state",),
}
"""Dotted paths of the personal fields of each event class (``*``: every key or item).

Empty values (``{}``, ``[]``, ``""``, ``null``) are stored as they are: that a
message had no metadata is not personal, and skipping them halves the work."""

_EMPTY: tuple[Any, ...] = ({}, [], "", None)

_BY_TOPIC = {get_topic(cls): paths for cls, paths in PERSONAL_FIELDS.items()}
KEY_CACHE_TTL_S = 30.0


class ContentIntegrityError(RuntimeError):
    """An encrypted field failed authentication: the stored bytes were altered."""


def _is_envelope(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {"$enc", "kid"}


def _walk(node: Any, parts: list[str], trail: list[str]) -> Iterable[tuple[Any, str | int, list[str]]]:
    """Yield ``(container, key, concrete path)`` of every leaf matching ``parts``."""
    head, rest = parts[0], parts[1:]
    if head == "*":
        keys: Iterable[str | int] = (
            list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()
        )
    else:
        keys = [head] if isinstance(node, dict) and head in node else []
    for key in keys:
        path = [*trail, str(key)]
        if rest:
            yield from _walk(node[key], rest, path)  # type: ignore[index]
        else:
            yield node, key, path


class KeyRing:
    """Content keys by visitor, with short-lived caches (erased keys stay erased)."""

    def __init__(self, recorder: SQLiteLedgerRecorder | PostgresLedgerRecorder) -> None:
        self.recorder = recorder
        self._lock = threading.Lock()
        self._subjects: dict[UUID, str | None] = {}
        self._active: dict[str, tuple[float, KeyRow]] = {}
        self._by_kid: dict[str, tuple[float, AESGCM]] = {}
        self._erased: set[str] = set()

    def __repr__(self) -> str:
        return f"KeyRing({type(self.recorder).__name__})"

    def set_subject(self, aggregate_id: UUID, visitor_id: str) -> None:
        self.recorder.set_subject(aggregate_id, visitor_id)
        with self._lock:
            self._subjects[aggregate_id] = visitor_id

    def subject_of(self, aggregate_id: UUID) -> str | None:
        with self._lock:
            if aggregate_id in self._subjects:
                return self._subjects[aggregate_id]
        subject = self.recorder.subject_of(aggregate_id)
        if subject is not None:
            with self._lock:
                if len(self._subjects) > 100_000:
                    self._subjects.clear()
                self._subjects[aggregate_id] = subject
        return subject

    def encryption_key(self, aggregate_id: UUID) -> tuple[str, AESGCM] | None:
        """The key new personal data of ``aggregate_id`` is encrypted with (created if needed).

        A cached key is checked against the store first (one primary-key look-up):
        an erasure in another process may have destroyed it, and data encrypted
        under a destroyed key would be lost. Racing the erasure itself is settled
        by the store: the erasure appends to every session and to the visitor, so
        a writer that encoded with the old key conflicts and re-encodes.
        """
        visitor_id = self.subject_of(aggregate_id)
        if visitor_id is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._active.get(visitor_id)
        if cached is not None and self.recorder.key_by_id(cached[1][0]) is None:
            self.forget([visitor_id], [cached[1][0]])
            cached = None
        if cached is None or now - cached[0] > KEY_CACHE_TTL_S:
            row = self.recorder.active_key(visitor_id, create=True)
            assert row is not None
            cached = (now, row)
            with self._lock:
                self._active[visitor_id] = cached
        kid, _, key = cached[1]
        return kid, AESGCM(key)

    def decryption_key(self, kid: str) -> AESGCM | None:
        """The key ``kid``, or None if it was destroyed."""
        now = time.monotonic()
        with self._lock:
            if kid in self._erased:
                return None
            cached = self._by_kid.get(kid)
        if cached is not None and now - cached[0] <= KEY_CACHE_TTL_S:
            return cached[1]
        key = self.recorder.key_by_id(kid)
        with self._lock:
            if key is None:
                self._erased.add(kid)
                self._by_kid.pop(kid, None)
                return None
            aead = AESGCM(key)
            self._by_kid[kid] = (now, aead)
            return aead

    def forget(self, visitor_ids: Iterable[str], key_ids: Iterable[str]) -> None:
        """Drop cached keys after an erasure in this process."""
        with self._lock:
            for visitor_id in visitor_ids:
                self._active.pop(visitor_id, None)
            for kid in key_ids:
                self._by_kid.pop(kid, None)
                self._erased.add(kid)


class ShreddingMapper(PydanticMapper):
    """The :class:`PydanticMapper` with personal fields encrypted per visitor.

    Without a key ring (``key_ring`` unset) it stores plain JSON; it reads both.
    """

    key_ring: KeyRing | None = None

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        paths = PERSONAL_FIELDS.get(type(domain_event))
        ring = self.key_ring
        if ring is None or paths is None or self.compressor or self.cipher:
            return super().to_stored_event(domain_event)
        if isinstance(domain_event, Session.Started):
            ring.set_subject(domain_event.originator_id, domain_event.visitor_id)
        key = ring.encryption_key(domain_event.originator_id)
        if key is None:
            return super().to_stored_event(domain_event)
        kid, aead = key
        data = domain_event.model_dump(mode="json")
        aad_prefix = [str(domain_event.originator_id), str(domain_event.originator_version)]
        for path in paths:
            for node, leaf, concrete in _walk(data, path.split("."), []):
                if node[leaf] in _EMPTY:
                    continue
                nonce = os.urandom(12)
                aad = json.dumps([*aad_prefix, *concrete]).encode()
                plain = json.dumps(node[leaf], separators=(",", ":")).encode()
                sealed = nonce + aead.encrypt(nonce, plain, aad)
                node[leaf] = {"$enc": base64.b64encode(sealed).decode(), "kid": kid}
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        paths = _BY_TOPIC.get(stored_event.topic)
        if paths is None or b'"$enc"' not in stored_event.state:
            return super().to_domain_event(stored_event)
        cls = resolve_topic(stored_event.topic)
        if paths == ("state",):
            # A snapshot: splice the decrypted state (JSON text) back in, so the
            # large part is parsed once, by pydantic's own JSON parser.
            data: dict[str, Any] = json.loads(stored_event.state)
            envelope = data.pop("state")
            if _is_envelope(envelope):
                plain = self._open(stored_event, envelope, ["state"])
                head = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
                return cls.model_validate_json(head[:-1] + b',"state":' + plain + b"}")
        return cls.model_validate(self.decrypt_state(stored_event))

    def _open(self, stored_event: StoredEvent, envelope: dict[str, str], concrete: list[str]) -> bytes:
        """The plaintext JSON of one envelope; a missing key raises for snapshots."""
        aead = self.key_ring.decryption_key(envelope["kid"]) if self.key_ring else None
        if aead is None:
            msg = (
                f"A snapshot of {stored_event.originator_id} is under an erased key; "
                "erasure deletes such snapshots, so delete it and read again."
            )
            raise ContentIntegrityError(msg)
        aad_prefix = [str(UUID(str(stored_event.originator_id))), str(stored_event.originator_version)]
        sealed = base64.b64decode(envelope["$enc"])
        aad = json.dumps([*aad_prefix, *concrete]).encode()
        try:
            return aead.decrypt(sealed[:12], sealed[12:], aad)
        except InvalidTag as err:
            msg = (
                f"An encrypted field of {stored_event.originator_id} version "
                f"{stored_event.originator_version} failed authentication; the stored "
                "event was altered. Run `chatledger audit verify`."
            )
            raise ContentIntegrityError(msg) from err

    def decrypt_state(self, stored_event: StoredEvent) -> dict[str, Any]:
        """The stored JSON with each envelope opened, or replaced by its erased marker."""
        data: dict[str, Any] = json.loads(stored_event.state)
        paths = _BY_TOPIC.get(stored_event.topic, ())
        for path in paths:
            for node, leaf, concrete in _walk(data, path.split("."), []):
                envelope = node[leaf]
                if not _is_envelope(envelope):
                    continue
                if concrete[-1] in ERASED_VALUES and (
                    not self.key_ring or self.key_ring.decryption_key(envelope["kid"]) is None
                ):
                    node[leaf] = ERASED_VALUES[concrete[-1]]
                    continue
                node[leaf] = json.loads(self._open(stored_event, envelope, concrete))
        return data
