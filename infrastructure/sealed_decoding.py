"""The mapper's fast decoders: messages and slots opened in one pass, and events
decoded *sealed* (envelopes left closed, no key looked up) for the read models
that never read personal content. A mixin of
:class:`~chatledger.infrastructure.shredding_mapper.ShreddingMapper`."""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic
from pydantic import ValidationError
from pydantic_core import from_json

from .envelopes import aad_id_of, is_envelope, loads_plain, open_envelope, walk
from .event_actors import drop_cause, without_cause
from .key_ring import KEY_CACHE_TTL_S, KeyRing
from .persistence import current_body
from .personal_fields import COMPILED_PATHS, SEALED_VALUES, TOP_LEVEL_FIELDS

_SEALED_FIELDS = tuple(sorted({name for names in TOP_LEVEL_FIELDS.values() for name in names}))
"""The personal fields of the events the byte-level sealed decoder handles (from ``PERSONAL_FIELDS``)."""
_ENVELOPE = re.compile(
    rb'"(' + "|".join(_SEALED_FIELDS).encode() + rb')":\{"\$enc":"[A-Za-z0-9+/=]*","kid":"[^"\\]*"\}'
)
_SEALED_BYTES = {
    name.encode(): b'"' + name.encode() + b'":' + json.dumps(SEALED_VALUES[name], separators=(",", ":")).encode()
    for name in _SEALED_FIELDS
}


def _sealed_bytes(match: re.Match[bytes]) -> bytes:
    return _SEALED_BYTES[match.group(1)]


class FastDecoding:
    """Decoders of :class:`~chatledger.infrastructure.shredding_mapper.ShreddingMapper`
    that skip its general path (the bulk of a rebuild)."""

    key_ring: KeyRing | None

    if TYPE_CHECKING:  # provided by the mapper

        def to_domain_event(self, stored_event: StoredEvent) -> Any: ...

        def open_all(self, stored_event: StoredEvent, data: dict[str, Any]) -> dict[str, Any]: ...

        def open_or_erased(
            self, stored_event: StoredEvent, envelope: dict[str, str], concrete: list[str], aad_id: str
        ) -> Any: ...

        @staticmethod
        def upcast_and_validate(event_class: Any, state: dict[str, Any], stored_event: StoredEvent) -> Any: ...

    def decode_top_level(self, stored_event: StoredEvent, fields: tuple[str, ...]) -> Any:
        """:meth:`to_domain_event` for events whose personal fields are all
        top-level: the same steps as :meth:`decrypt_state`, in one function
        (this runs once per message of a rebuild)."""
        data: dict[str, Any] = drop_cause(from_json(stored_event.state))
        cls = resolve_topic(stored_event.topic)
        if "class_version" in data or cls.class_version != 1:
            if data.get("class_version", 1) != cls.class_version:
                # Stored at another version: its personal paths may differ.
                return self.upcast_and_validate(cls, self.open_all(stored_event, data), stored_event)
            del data["class_version"]
        ring = self.key_ring
        assert ring is not None
        by_kid, erased = ring.cache_views()
        now: float | None = None
        aad_id: str | None = None
        for name in fields:
            envelope = data.get(name)
            if not (
                type(envelope) is dict and len(envelope) == 2 and "$enc" in envelope and "kid" in envelope
            ):
                continue
            kid = envelope["kid"]
            cached = by_kid.get(kid)
            if now is None:
                now = time.monotonic()
            if cached is not None and kid not in erased and now - cached[0] <= KEY_CACHE_TTL_S:
                aead: AESGCM | None = cached[1]
            else:
                aead = ring.decryption_key(kid)
            if aead is None:
                data[name] = self.open_or_erased(stored_event, envelope, [name], aad_id or aad_id_of(stored_event))
                continue
            if aad_id is None:
                aad_id = aad_id_of(stored_event)
            aad = f'["{aad_id}", "{stored_event.originator_version}", "{name}"]'.encode()
            data[name] = loads_plain(open_envelope(stored_event, aead, envelope, aad))
        return cls.model_validate(data)

    def to_sealed_event(self, stored_event: StoredEvent) -> Any:
        """The event with every envelope left closed: each personal field reads
        as its :data:`SEALED_VALUES` placeholder, and no key is looked up.

        For consumers that never read personal content (the analytics and
        active-session read models): every other field is exactly what
        :meth:`to_domain_event` gives, at a fraction of the cost.
        """
        stored_event = without_cause(stored_event)
        state = stored_event.state
        compiled = COMPILED_PATHS.get(stored_event.topic)
        if compiled is None or b'"$enc"' not in state or compiled[0][0] == "state":
            return self.to_domain_event(stored_event)
        cls = resolve_topic(stored_event.topic)
        if stored_event.topic in TOP_LEVEL_FIELDS:
            # Messages, slots and ends have no other dict-valued field, so every
            # envelope in their JSON is inside a personal field: replace them
            # in the bytes and let pydantic parse once. Any other layout falls
            # through to the general path.
            body = current_body(state, cls.class_version)
            if body is not None:
                try:
                    return cls.model_validate_json(_ENVELOPE.sub(_sealed_bytes, body))
                except ValidationError:
                    pass
        data: dict[str, Any] = drop_cause(from_json(state))
        if "class_version" in data or cls.class_version != 1:
            if data.get("class_version", 1) != cls.class_version:
                # Another version: the upcasters need the plaintext (or the
                # erased markers), not placeholders; decode it fully.
                return self.to_domain_event(stored_event)
            del data["class_version"]
        for path, parts in compiled:
            if parts is None:
                if is_envelope(data.get(path)):
                    data[path] = SEALED_VALUES[path]
                continue
            for node, leaf, _ in walk(data, parts, []):
                if is_envelope(node[leaf]):
                    node[leaf] = SEALED_VALUES[parts[-1]]
        return cls.model_validate(data)
