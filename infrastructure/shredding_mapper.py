"""Crypto-shredding: personal fields are stored encrypted under a per-visitor key.

The :class:`ShreddingMapper` replaces each personal field of an event (see
:data:`~chatledger.domain.personal_data.PERSONAL_FIELDS`) with an
envelope ``{"$enc": base64(nonce|ciphertext), "kid": key id}`` made with
AES-256-GCM (``cryptography``, :mod:`chatledger.infrastructure.envelopes`), so
the rest of the event (ids, times, types, slot names, counts) stays readable
JSON. The key belongs to the visitor whose conversation it is:
``Session.Started`` names the visitor, and ``session id -> visitor`` is stored
in ``chatledger_key_subjects`` in the transaction of that event, so every later
event (and snapshot) of that session finds the same key owner. A new key is made
in memory and stored in the transaction of the first events encrypted with it;
the recorder checks there that every key a batch uses is in the store (see
:class:`~chatledger.infrastructure.key_ring.KeyRing`).

Erasure destroys the visitor's key rows (in the transaction that appends the
``Visitor.DataErased`` event, see :mod:`chatledger.infrastructure.recording`).
From then on each envelope under that key decodes to an explicit marker
(:data:`ERASED_VALUES`), so replay, projections and exports show "erased"
while the stored bytes, and so the hash chains, stay exactly as they were.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic
from pydantic_core import from_json

from ..domain.erasure import ERASED_VALUES
from ..domain.pydantic_aggregates import upcast
from ..domain.session import Session
from ..domain.tenancy import scoped_key
from .envelopes import (
    KID_PATTERN,
    ErasedSnapshotError,
    aad_id_of,
    associated_data,
    envelopes,
    is_envelope,
    loads_plain,
    open_envelope,
    walk,
)
from .event_actors import drop_cause, without_cause
from .key_ring import KeyRing
from .persistence import PydanticMapper
from .personal_fields import COMPILED_PATHS, EMPTY_VALUES, PERSONAL_FIELDS, TOP_LEVEL_FIELDS
from .recording import KeyedStoredEvent
from .sealed_decoding import FastDecoding



class ShreddingMapper(FastDecoding, PydanticMapper):
    """The :class:`PydanticMapper` with personal fields encrypted per visitor.

    Without a key ring (``key_ring`` unset) it stores plain JSON; it reads both.
    """

    key_ring: KeyRing | None = None

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        paths = PERSONAL_FIELDS.get(type(domain_event))
        ring = self.key_ring
        if ring is None or paths is None or self.compressor or self.cipher:
            return super().to_stored_event(domain_event)
        new_session = isinstance(domain_event, Session.Started)
        if new_session:
            ring.remember_key_owner(domain_event.originator_id, scoped_key(domain_event.tenant, domain_event.visitor_id))
        # A first session is most often a new visitor's: guess "no key yet" and
        # save a read. A later session's visitor usually has a key: look it up.
        first_session = new_session and domain_event.previous_session_id is None
        key = ring.encryption_key(domain_event.originator_id, new_session=first_session)
        if key is None:
            return super().to_stored_event(domain_event)
        kid, aead, visitor_id, new_key = key
        used = False
        data = domain_event.model_dump(mode="json")
        aad_prefix = [str(domain_event.originator_id), str(domain_event.originator_version)]
        for path in paths:
            for node, leaf, concrete in walk(data, path.split("."), []):
                if node[leaf] in EMPTY_VALUES:
                    continue
                nonce = os.urandom(12)
                aad = json.dumps([*aad_prefix, *concrete]).encode()
                plain = json.dumps(node[leaf], separators=(",", ":")).encode()
                sealed = nonce + aead.encrypt(nonce, plain, aad)
                node[leaf] = {"$enc": base64.b64encode(sealed).decode(), "kid": kid}
                used = True
        version = type(domain_event).class_version
        if version != 1:
            data["class_version"] = version  # last, as PydanticMapper writes it
        return KeyedStoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=get_topic(type(domain_event)),
            state=self.stamped(domain_event, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()),
            visitor_id=visitor_id,
            kid=kid if used else None,
            new_key=new_key if used else None,
            opens_session=new_session,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The event, its personal fields decrypted (or erased markers), upcast
        to its class's version (see :class:`PydanticMapper`).

        Upcasters run after decryption, on plaintext: an event stored at its
        class's version is opened at the class's personal paths
        (:data:`PERSONAL_FIELDS`), one stored at an older version at wherever
        its envelopes are (:func:`~chatledger.infrastructure.envelopes.envelopes`), since its personal fields may
        have been named otherwise then. The actor is taken off first."""
        stored_event = without_cause(stored_event)
        state = stored_event.state
        if b'"$enc"' not in state:
            return super().to_domain_event(stored_event)
        compiled = COMPILED_PATHS.get(stored_event.topic)
        if compiled is None:  # envelopes in an event that has no personal field (now)
            return self.upcast_and_validate(
                resolve_topic(stored_event.topic), self.decrypt_state(stored_event, upcast_state=False), stored_event
            )
        fields = TOP_LEVEL_FIELDS.get(stored_event.topic)
        if fields is not None and self.key_ring is not None:
            return self.decode_top_level(stored_event, fields)
        cls = resolve_topic(stored_event.topic)
        if compiled[0][0] == "state":
            # A snapshot: splice the decrypted state (JSON text) back in, so the
            # large part is parsed once, by pydantic's own JSON parser.
            data: dict[str, Any] = json.loads(state)
            envelope = data.pop("state")
            # At another version: StaleSnapshot, before any key is looked up.
            upcast(cls, data, stored_event.originator_id, stored_event.originator_version)
            if is_envelope(envelope):
                plain = self._open(stored_event, envelope, ["state"])
                head = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
                return cls.model_validate_json(head[:-1] + b',"state":' + plain + b"}")
        return cls.model_validate(self.decrypt_state(stored_event))

    def prefetch_keys(self, stored_events: Sequence[StoredEvent]) -> None:
        """Load the keys of every envelope of these events at once (before
        decoding a batch of them with :meth:`to_domain_event`)."""
        if self.key_ring is None:
            return
        states = [e.state for e in stored_events if e.topic in COMPILED_PATHS]
        if states:
            self.key_ring.prefetch(k.decode() for k in KID_PATTERN.findall(b"\n".join(states)))

    def _open(
        self,
        stored_event: StoredEvent,
        envelope: dict[str, str],
        concrete: list[str],
        aad_id: str | None = None,
    ) -> bytes:
        """The plaintext JSON of one envelope; a missing key raises for snapshots."""
        aead = self.key_ring.decryption_key(envelope["kid"]) if self.key_ring else None
        if aead is None:
            msg = (
                f"A snapshot of {stored_event.originator_id} is under an erased key; "
                "erasure deletes such snapshots, so delete it and read again."
            )
            raise ErasedSnapshotError(msg)
        return open_envelope(stored_event, aead, envelope, associated_data(stored_event, concrete, aad_id))

    def decrypt_state(self, stored_event: StoredEvent, *, upcast_state: bool = True) -> dict[str, Any]:
        """The stored JSON with each envelope opened, or replaced by its erased
        marker, and upcast to its class's version (unless ``upcast_state`` is
        false): the state the event class validates (the actor taken off)."""
        stored_event = without_cause(stored_event)
        data: dict[str, Any] = drop_cause(from_json(stored_event.state))
        cls = resolve_topic(stored_event.topic)
        if stored_event.topic not in COMPILED_PATHS or data.get("class_version", 1) != cls.class_version:
            self.open_all(stored_event, data)
        else:
            self._open_current(stored_event, data)
        if upcast_state:
            upcast(cls, data, stored_event.originator_id, stored_event.originator_version)
        return data

    def open_all(self, stored_event: StoredEvent, data: dict[str, Any]) -> dict[str, Any]:
        """Open every envelope of ``data`` in place, wherever it is (an event
        stored at an older version); an erased one reads as the marker of its
        stored field name (:data:`ERASED_VALUES`), None for a name without one."""
        aad_id = aad_id_of(stored_event)
        for node, leaf, concrete in list(envelopes(data, [])):
            envelope = node[leaf]
            aead = self.key_ring.decryption_key(envelope["kid"]) if self.key_ring else None
            if aead is None:
                node[leaf] = ERASED_VALUES.get(concrete[-1])
            else:
                node[leaf] = loads_plain(open_envelope(stored_event, aead, envelope, associated_data(stored_event, concrete, aad_id)))
        return data

    def _open_current(self, stored_event: StoredEvent, data: dict[str, Any]) -> None:
        """Open the envelopes at the personal paths of the event's class, in place."""
        compiled = COMPILED_PATHS.get(stored_event.topic, ())
        aad_id: str | None = None
        for path, parts in compiled:
            if parts is None:
                envelope = data.get(path)
                if not is_envelope(envelope):
                    continue
                aad_id = aad_id or aad_id_of(stored_event)
                data[path] = self.open_or_erased(stored_event, envelope, [path], aad_id)
                continue
            for node, leaf, concrete in walk(data, parts, []):
                envelope = node[leaf]
                if is_envelope(envelope):
                    aad_id = aad_id or aad_id_of(stored_event)
                    node[leaf] = self.open_or_erased(stored_event, envelope, concrete, aad_id)

    def open_or_erased(self, stored_event: StoredEvent, envelope: dict[str, str], concrete: list[str], aad_id: str) -> Any:
        """The decrypted value of one envelope, or its erased marker if its key is gone."""
        aead = self.key_ring.decryption_key(envelope["kid"]) if self.key_ring else None
        if aead is None:
            if concrete[-1] in ERASED_VALUES:
                return ERASED_VALUES[concrete[-1]]
            return loads_plain(self._open(stored_event, envelope, concrete, aad_id))  # raises
        return loads_plain(open_envelope(stored_event, aead, envelope, associated_data(stored_event, concrete, aad_id)))
