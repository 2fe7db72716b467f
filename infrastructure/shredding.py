"""Crypto-shredding: personal fields are stored encrypted under a per-visitor key.

The :class:`ShreddingMapper` replaces each personal field of an event (see
:data:`PERSONAL_FIELDS`) with an envelope ``{"$enc": base64(nonce|ciphertext),
"kid": key id}`` made with AES-256-GCM (``cryptography``), so the rest of the
event (ids, times, types, slot names, counts) stays readable JSON. The key
belongs to the visitor whose conversation it is: ``Session.Started`` names the
visitor, and ``session id -> visitor`` is stored in ``chatledger_key_subjects``
in the transaction of that event, so every later event (and snapshot) of that
session finds the same subject. A new key is made in memory and stored in the
transaction of the first events encrypted with it; the recorder checks there
that every key a batch uses is in the store (see :class:`KeyRing`).

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
import binascii
import itertools
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol
from uuid import UUID, uuid4

from chatledger.domain.erasure import ERASED_VALUES
from chatledger.domain.errors import ChatLedgerError
from chatledger.domain.model import DomainEvent, upcast
from chatledger.domain.session import Session
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic
from psycopg.sql import SQL
from pydantic import ValidationError
from pydantic_core import from_json

from .hashchain import ChainBreak
from .persistence import PydanticMapper, current_body
from .recorders import (
    ERASURE_TOPIC,
    KEYS,
    KeyedStoredEvent,
    KeyRow,
    PostgresLedgerRecorder,
    SQLiteLedgerRecorder,
    sqlite_select_in,
)

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

_EMPTY: tuple[Any, ...] = ({}, [], "", None)

_BY_TOPIC = {get_topic(cls): paths for cls, paths in PERSONAL_FIELDS.items()}
KEY_CACHE_TTL_S = 30.0
MAX_CACHED_KEYS = 20_000
"""Bound of each of the key ring's caches (one AES key object is ~2.6 KB): they
must not grow with the number of visitors a long-running process has met."""

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
:meth:`ShreddingMapper.to_sealed_event` (envelope left closed, no key looked up).
Only for consumers that never read personal content (see
``ReadModel.personal_fields``); they must never be stored or shown."""

_PLAIN_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_COMPILED: dict[str, tuple[tuple[str, list[str] | None], ...]] = {
    topic: tuple(
        (path, None if _PLAIN_FIELD.fullmatch(path) else path.split(".")) for path in paths
    )
    for topic, paths in _BY_TOPIC.items()
}
"""Per topic: each personal path, with its parts if it is not one top-level field."""
_TOP_LEVEL: dict[str, tuple[str, ...]] = {
    topic: tuple(path for path, _ in compiled)
    for topic, compiled in _COMPILED.items()
    if all(parts is None for _, parts in compiled) and compiled[0][0] != "state"
}
"""Topics whose personal fields are all top-level (messages, slots): decoded by
the mapper's straight-line fast path, the bulk of a rebuild."""


class ContentIntegrityError(ChatLedgerError, RuntimeError):
    """An encrypted field failed authentication: the stored bytes were altered.
    A chatledger error (the command line prints it on one line, exit status 1)."""


class ErasedSnapshotError(ContentIntegrityError):
    """A snapshot is under a key an erasure destroyed: stale derived data the
    erasure deletes right after its transaction (left by a crash in between, or
    read in that moment by another process). The ledger drops it and replays."""


def _is_envelope(value: Any) -> bool:
    return type(value) is dict and len(value) == 2 and "$enc" in value and "kid" in value


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


def _envelopes(node: Any, trail: list[str]) -> Iterable[tuple[Any, str | int, list[str]]]:
    """Yield ``(container, key, concrete path)`` of every envelope anywhere in
    ``node``, whatever the event's personal paths are today: how an event
    stored at an older version is opened (its personal fields may have had
    other names then; an envelope's associated data names the path it was
    stored at)."""
    items: Iterable[tuple[str | int, Any]]
    if type(node) is dict:
        items = node.items()
    elif type(node) is list:
        items = enumerate(node)
    else:
        return
    for key, value in list(items):
        if _is_envelope(value):
            yield node, key, [*trail, str(key)]
        elif type(value) in (dict, list):
            yield from _envelopes(value, [*trail, str(key)])


def _bounded(cache: dict[Any, Any] | set[Any], now: float | None = None) -> None:
    """Make room in a cache that is full: drop expired entries, then the oldest.

    Called with the ring's lock held, before an insert. Dropping an entry only
    costs a look-up in the store later (which stays the truth, also for erased
    keys), so a crude bound beats an unbounded cache in a process that meets
    millions of visitors."""
    if len(cache) < MAX_CACHED_KEYS:
        return
    if isinstance(cache, set):
        cache.clear()
        return
    if now is not None:
        for key in [k for k, v in cache.items() if now - v[0] > KEY_CACHE_TTL_S]:
            del cache[key]
    # Still full: forget the oldest half (dicts keep insertion order).
    for key in list(itertools.islice(cache, max(len(cache) - MAX_CACHED_KEYS // 2, 0))):
        del cache[key]


class KeyRing:
    """Content keys by visitor, with short-lived, bounded caches (erased keys stay erased).

    Writing costs no transaction of its own: a visitor without a key gets one
    made in memory, and the recorder inserts it (and a new session's subject row)
    in the transaction of the events encrypted with it, where it also checks
    that every key those events use is in the store and is their visitor's. A
    key destroyed by an erasure elsewhere, or a visitor whose key another writer
    created first, fails that check: nothing is written, the recorder tells this
    ring (:meth:`_on_stale_keys`, with the visitor's current key) and raises a
    conflict, and the command re-runs with the right key.
    """

    def __init__(self, recorder: SQLiteLedgerRecorder | PostgresLedgerRecorder) -> None:
        self.recorder = recorder
        self._lock = threading.Lock()
        self._subjects: dict[UUID, str | None] = {}
        # visitor -> (cached at, key row, confirmed: the row is known to be committed)
        self._active: dict[str, tuple[float, KeyRow, bool]] = {}
        self._by_kid: dict[str, tuple[float, AESGCM]] = {}
        self._erased: set[str] = set()
        recorder.on_stale_keys = self._on_stale_keys
        recorder.on_keys_confirmed = self._on_keys_confirmed

    def __repr__(self) -> str:
        return f"KeyRing({type(self.recorder).__name__})"

    def remember_subject(self, aggregate_id: UUID, visitor_id: str) -> None:
        """``aggregate_id`` is a session of ``visitor_id`` (its ``Started`` event is
        being encoded; the recorder stores the row with it)."""
        with self._lock:
            _bounded(self._subjects)
            self._subjects[aggregate_id] = visitor_id

    def subject_of(self, aggregate_id: UUID) -> str | None:
        with self._lock:
            if aggregate_id in self._subjects:
                return self._subjects[aggregate_id]
        subject = self.recorder.subject_of(aggregate_id)
        if subject is not None:
            with self._lock:
                _bounded(self._subjects)
                self._subjects[aggregate_id] = subject
        return subject

    def encryption_key(
        self, aggregate_id: UUID, *, new_session: bool = False
    ) -> tuple[str, AESGCM, str, KeyRow | None] | None:
        """``(kid, key, visitor, new key row or None)`` for new personal data of ``aggregate_id``.

        The cached key of the visitor is used without a look-up: the recorder
        checks it in the write transaction. Without one, the store is asked
        (read only), except for a visitor's first session (``new_session``: most
        often a new visitor), where a key is made in memory straight away; if the visitor
        had one after all, the write conflicts and the retry uses it. A key made
        in memory is returned as a row for the recorder to insert until a write
        with it has committed.
        """
        visitor_id = self.subject_of(aggregate_id)
        if visitor_id is None:
            return None
        with self._lock:
            cached = self._active.get(visitor_id)
        if cached is None:
            row = None if new_session else self.recorder.active_key(visitor_id)
            now = time.monotonic()
            with self._lock:
                cached = self._active.get(visitor_id)  # another thread may have been first
                if cached is None:
                    if row is None:
                        row = KeyRow((str(uuid4()), visitor_id, secrets.token_bytes(32)))
                        cached = (now, row, False)
                    else:
                        cached = (now, row, True)
                    _bounded(self._active, now)
                    self._active[visitor_id] = cached
        _, row, confirmed = cached
        return row[0], AESGCM(row[2]), visitor_id, None if confirmed else row

    def _on_stale_keys(self, kids: Sequence[str], visitor_ids: Sequence[str], current: Sequence[KeyRow]) -> None:
        """Called by the recorder, in a write transaction it is about to roll back:
        ``kids`` are not (or not any more) in the store; ``visitor_ids`` wrote
        with a stale key; ``current`` are those visitors' keys in the store as
        the failing transaction saw them, which may include a key this very
        batch inserted (and the rollback removes): they are cached as not yet
        confirmed, so the next write sends them again (a no-op insert if the
        key exists, checked against the destroyed keys if not)."""
        now = time.monotonic()
        with self._lock:
            for visitor_id in visitor_ids:
                self._active.pop(visitor_id, None)
            for kid in kids:
                self._by_kid.pop(kid, None)
                _bounded(self._erased)
                self._erased.add(kid)
            for row in current:
                _bounded(self._active, now)
                self._active[row[1]] = (now, row, False)

    def _on_keys_confirmed(self, rows: Sequence[KeyRow]) -> None:
        """Called by the recorder after a write that inserted ``rows`` committed."""
        now = time.monotonic()
        with self._lock:
            for row in rows:
                _bounded(self._active, now)
                self._active[row[1]] = (now, row, True)
                _bounded(self._by_kid, now)
                self._by_kid[row[0]] = (now, AESGCM(row[2]))

    def decryption_key(self, kid: str) -> AESGCM | None:
        """The key ``kid``, or None if it was destroyed."""
        now = time.monotonic()
        # Lock-free fast path (single dict/set reads are atomic): decoding a
        # rebuild asks for a key once per message.
        if kid in self._erased:
            return None
        cached = self._by_kid.get(kid)
        if cached is not None and now - cached[0] <= KEY_CACHE_TTL_S:
            return cached[1]
        key = self.recorder.key_by_id(kid)
        with self._lock:
            if key is None:
                _bounded(self._erased)
                self._erased.add(kid)
                self._by_kid.pop(kid, None)
                return None
            aead = AESGCM(key)
            _bounded(self._by_kid, now)
            self._by_kid[kid] = (now, aead)
            return aead

    def prefetch(self, kids: Iterable[str]) -> None:
        """Load the keys ``kids`` that are not cached, a few hundred per query
        (a rebuild meets a new visitor's key every few events; one look-up
        each cost ~90 µs). Missing keys are remembered as erased, as in
        :meth:`decryption_key`."""
        now = time.monotonic()
        missing = []
        for kid in set(kids):
            cached = self._by_kid.get(kid)
            if kid not in self._erased and (cached is None or now - cached[0] > KEY_CACHE_TTL_S):
                missing.append(kid)
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            found = _keys_by_id(self.recorder, chunk)
            with self._lock:
                for kid in chunk:
                    key = found.get(kid)
                    if key is None:
                        _bounded(self._erased)
                        self._erased.add(kid)
                        self._by_kid.pop(kid, None)
                    else:
                        _bounded(self._by_kid, now)
                        self._by_kid[kid] = (now, AESGCM(key))

    def forget(self, visitor_ids: Iterable[str], key_ids: Iterable[str]) -> None:
        """Drop cached keys after an erasure in this process."""
        with self._lock:
            for visitor_id in visitor_ids:
                self._active.pop(visitor_id, None)
            for kid in key_ids:
                self._by_kid.pop(kid, None)
                _bounded(self._erased)
                self._erased.add(kid)


def _keys_by_id(recorder: SQLiteLedgerRecorder | PostgresLedgerRecorder, kids: list[str]) -> dict[str, bytes]:
    """``kid -> key`` of those of ``kids`` that exist, in one query."""
    with recorder.datastore.transaction(commit=False) as c:
        if isinstance(recorder, PostgresLedgerRecorder):
            c.execute(
                SQL("SELECT kid, key FROM {} WHERE kid = ANY(%s)").format(recorder._t(KEYS)),
                (kids,),
            )
            return {row["kid"]: bytes(row["key"]) for row in c.fetchall()}
        rows = sqlite_select_in(c, f"SELECT kid, key FROM {KEYS} WHERE kid IN ({{}})", kids)
        return {row[0]: bytes(row[1]) for row in rows}


_SEALED_FIELDS = ("text", "metadata", "value", "client_message_id", "reason")
_ENVELOPE = re.compile(
    rb'"(' + "|".join(_SEALED_FIELDS).encode() + rb')":\{"\$enc":"[A-Za-z0-9+/=]*","kid":"[^"\\]*"\}'
)
_SEALED_BYTES = {
    name.encode(): b'"' + name.encode() + b'":' + json.dumps(SEALED_VALUES[name], separators=(",", ":")).encode()
    for name in _SEALED_FIELDS
}


def _sealed_bytes(match: re.Match[bytes]) -> bytes:
    return _SEALED_BYTES[match.group(1)]


_KID = re.compile(rb'"kid":"([^"\\]{1,100})"')


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
        new_session = isinstance(domain_event, Session.Started)
        if new_session:
            ring.remember_subject(domain_event.originator_id, domain_event.visitor_id)
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
            for node, leaf, concrete in _walk(data, path.split("."), []):
                if node[leaf] in _EMPTY:
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
            state=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
            visitor_id=visitor_id,
            kid=kid if used else None,
            new_key=new_key if used else None,
            subject=new_session,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The event, its personal fields decrypted (or erased markers), upcast
        to its class's version (see :class:`PydanticMapper`).

        Upcasters run after decryption, on plaintext: an event stored at its
        class's version is opened at the class's personal paths
        (:data:`PERSONAL_FIELDS`), one stored at an older version at wherever
        its envelopes are (:func:`_envelopes`), since its personal fields may
        have been named otherwise then."""
        state = stored_event.state
        if b'"$enc"' not in state:
            return super().to_domain_event(stored_event)
        compiled = _COMPILED.get(stored_event.topic)
        if compiled is None:  # envelopes in an event that has no personal field (now)
            return self.upcast_and_validate(
                resolve_topic(stored_event.topic), self.decrypt_state(stored_event, upcast_state=False), stored_event
            )
        fields = _TOP_LEVEL.get(stored_event.topic)
        if fields is not None and self.key_ring is not None:
            return self._decode_top_level(stored_event, fields)
        cls = resolve_topic(stored_event.topic)
        if compiled[0][0] == "state":
            # A snapshot: splice the decrypted state (JSON text) back in, so the
            # large part is parsed once, by pydantic's own JSON parser.
            data: dict[str, Any] = json.loads(state)
            envelope = data.pop("state")
            # At another version: StaleSnapshot, before any key is looked up.
            upcast(cls, data, stored_event.originator_id, stored_event.originator_version)
            if _is_envelope(envelope):
                plain = self._open(stored_event, envelope, ["state"])
                head = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
                return cls.model_validate_json(head[:-1] + b',"state":' + plain + b"}")
        return cls.model_validate(self.decrypt_state(stored_event))

    def _decode_top_level(self, stored_event: StoredEvent, fields: tuple[str, ...]) -> Any:
        """:meth:`to_domain_event` for events whose personal fields are all
        top-level: the same steps as :meth:`decrypt_state`, in one function
        (this runs once per message of a rebuild)."""
        data: dict[str, Any] = from_json(stored_event.state)
        cls = resolve_topic(stored_event.topic)
        if "class_version" in data or cls.class_version != 1:
            if data.get("class_version", 1) != cls.class_version:
                # Stored at another version: its personal paths may differ.
                return self.upcast_and_validate(cls, self._open_all(stored_event, data), stored_event)
            del data["class_version"]
        ring = self.key_ring
        assert ring is not None
        by_kid, erased, now = ring._by_kid, ring._erased, None
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
                data[name] = self._opened(stored_event, envelope, [name], aad_id or _aad_id(stored_event))
                continue
            if aad_id is None:
                aad_id = _aad_id(stored_event)
            aad = f'["{aad_id}", "{stored_event.originator_version}", "{name}"]'.encode()
            data[name] = _loads(self._decrypt(stored_event, aead, envelope, aad))
        return cls.model_validate(data)

    def prefetch_keys(self, stored_events: Sequence[StoredEvent]) -> None:
        """Load the keys of every envelope of these events at once (before
        decoding a batch of them with :meth:`to_domain_event`)."""
        if self.key_ring is None:
            return
        states = [e.state for e in stored_events if e.topic in _COMPILED]
        if states:
            self.key_ring.prefetch(k.decode() for k in _KID.findall(b"\n".join(states)))

    def to_sealed_event(self, stored_event: StoredEvent) -> Any:
        """The event with every envelope left closed: each personal field reads
        as its :data:`SEALED_VALUES` placeholder, and no key is looked up.

        For consumers that never read personal content (the analytics and
        active-session read models): every other field is exactly what
        :meth:`to_domain_event` gives, at a fraction of the cost.
        """
        state = stored_event.state
        compiled = _COMPILED.get(stored_event.topic)
        if compiled is None or b'"$enc"' not in state or compiled[0][0] == "state":
            return self.to_domain_event(stored_event)
        cls = resolve_topic(stored_event.topic)
        if stored_event.topic in _TOP_LEVEL:
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
        data: dict[str, Any] = from_json(state)
        if "class_version" in data or cls.class_version != 1:
            if data.get("class_version", 1) != cls.class_version:
                # Another version: the upcasters need the plaintext (or the
                # erased markers), not placeholders; decode it fully.
                return self.to_domain_event(stored_event)
            del data["class_version"]
        for path, parts in compiled:
            if parts is None:
                if _is_envelope(data.get(path)):
                    data[path] = SEALED_VALUES[path]
                continue
            for node, leaf, _ in _walk(data, parts, []):
                if _is_envelope(node[leaf]):
                    node[leaf] = SEALED_VALUES[parts[-1]]
        return cls.model_validate(data)

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
        return self._decrypt(stored_event, aead, envelope, _aad(stored_event, concrete, aad_id))

    @staticmethod
    def _decrypt(stored_event: StoredEvent, aead: AESGCM, envelope: dict[str, str], aad: bytes) -> bytes:
        try:
            sealed = binascii.a2b_base64(envelope["$enc"])
            return aead.decrypt(sealed[:12], sealed[12:], aad)
        except (InvalidTag, binascii.Error) as err:
            msg = (
                f"An encrypted field of {stored_event.originator_id} version "
                f"{stored_event.originator_version} failed authentication; the stored "
                "event was altered. Run `chatledger audit verify`."
            )
            raise ContentIntegrityError(msg) from err

    def decrypt_state(self, stored_event: StoredEvent, *, upcast_state: bool = True) -> dict[str, Any]:
        """The stored JSON with each envelope opened, or replaced by its erased
        marker, and upcast to its class's version (unless ``upcast_state`` is
        false): the state the event class validates."""
        data: dict[str, Any] = from_json(stored_event.state)
        cls = resolve_topic(stored_event.topic)
        if stored_event.topic not in _COMPILED or data.get("class_version", 1) != cls.class_version:
            self._open_all(stored_event, data)
        else:
            self._open_current(stored_event, data)
        if upcast_state:
            upcast(cls, data, stored_event.originator_id, stored_event.originator_version)
        return data

    def _open_all(self, stored_event: StoredEvent, data: dict[str, Any]) -> dict[str, Any]:
        """Open every envelope of ``data`` in place, wherever it is (an event
        stored at an older version); an erased one reads as the marker of its
        stored field name (:data:`ERASED_VALUES`), None for a name without one."""
        aad_id = _aad_id(stored_event)
        for node, leaf, concrete in list(_envelopes(data, [])):
            envelope = node[leaf]
            aead = self.key_ring.decryption_key(envelope["kid"]) if self.key_ring else None
            if aead is None:
                node[leaf] = ERASED_VALUES.get(concrete[-1])
            else:
                node[leaf] = _loads(self._decrypt(stored_event, aead, envelope, _aad(stored_event, concrete, aad_id)))
        return data

    def _open_current(self, stored_event: StoredEvent, data: dict[str, Any]) -> None:
        """Open the envelopes at the personal paths of the event's class, in place."""
        compiled = _COMPILED.get(stored_event.topic, ())
        aad_id: str | None = None
        for path, parts in compiled:
            if parts is None:
                envelope = data.get(path)
                if not _is_envelope(envelope):
                    continue
                aad_id = aad_id or _aad_id(stored_event)
                data[path] = self._opened(stored_event, envelope, [path], aad_id)
                continue
            for node, leaf, concrete in _walk(data, parts, []):
                envelope = node[leaf]
                if _is_envelope(envelope):
                    aad_id = aad_id or _aad_id(stored_event)
                    node[leaf] = self._opened(stored_event, envelope, concrete, aad_id)

    def _opened(self, stored_event: StoredEvent, envelope: dict[str, str], concrete: list[str], aad_id: str) -> Any:
        """The decrypted value of one envelope, or its erased marker if its key is gone."""
        aead = self.key_ring.decryption_key(envelope["kid"]) if self.key_ring else None
        if aead is None:
            if concrete[-1] in ERASED_VALUES:
                return ERASED_VALUES[concrete[-1]]
            return _loads(self._open(stored_event, envelope, concrete, aad_id))  # raises
        return _loads(self._decrypt(stored_event, aead, envelope, _aad(stored_event, concrete, aad_id)))


def _aad(stored_event: StoredEvent, concrete: list[str], aad_id: str | None = None) -> bytes:
    """An envelope's associated data: ``json.dumps([aggregate id, version, *path])``."""
    aad_id = aad_id or _aad_id(stored_event)
    version = stored_event.originator_version
    if len(concrete) == 1 and _PLAIN_FIELD.fullmatch(concrete[0]):
        # Exactly what json.dumps gives: nothing here needs escaping.
        return f'["{aad_id}", "{version}", "{concrete[0]}"]'.encode()
    return json.dumps([aad_id, str(version), *concrete]).encode()


def _loads(plain: bytes) -> Any:
    """``json.loads`` of a decrypted value, via pydantic's faster parser (which
    refuses lone surrogates; ``json.dumps`` escapes them, so fall back)."""
    if plain[:1] == b'"' and b"\\" not in plain:
        return plain[1:-1].decode()  # a string with nothing escaped (most texts)
    try:
        return from_json(plain)
    except ValueError:
        return json.loads(plain)


def _aad_id(stored_event: StoredEvent) -> str:
    """The canonical text of the event's aggregate id (part of every envelope's
    associated data). The projector's SQLite records carry the stored hex
    (``raw_originator_id``), which saves two UUID conversions per event."""
    raw = getattr(stored_event, "raw_originator_id", None)
    if type(raw) is str and _HEX32.fullmatch(raw):
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    originator_id = stored_event.originator_id
    if type(originator_id) is UUID:  # PostgreSQL records
        return str(originator_id)
    return str(UUID(str(originator_id)))


# --------------------------------------------------------------------------- key audit

_ENVELOPE_KID = re.compile(rb'\{"\$enc":"[A-Za-z0-9+/=]*","kid":"([^"\\]{1,100})"\}')
KEY_CHECK_BATCH = 500
"""Keys :class:`KeyAudit` looks up per query while ``verify`` reads the log."""


class KeyTables(Protocol):
    """What :class:`KeyAudit` reads from the key tables, inside the verification's
    snapshot (each recorder implements it)."""

    def keys(self, kids: Sequence[str]) -> dict[str, tuple[str, bytes]]:  # pragma: no cover
        """``kid -> (visitor_id, key)`` of those of ``kids`` in ``chatledger_keys``."""
        raise NotImplementedError

    def destroyed(self, kids: Sequence[str]) -> set[str]:  # pragma: no cover
        """Those of ``kids`` in ``chatledger_destroyed_keys``."""
        raise NotImplementedError

    def subjects(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, str]:  # pragma: no cover
        """``session -> visitor`` from ``chatledger_key_subjects``."""
        raise NotImplementedError

    def erasure_states(self) -> Iterable[tuple[int, bytes]]:  # pragma: no cover
        """``(log position, stored bytes)`` of every ``Visitor.DataErased`` event of the log."""
        raise NotImplementedError


class KeyAudit:
    """Checks the key table against the log while ``verify`` reads the events.

    The key table is not hash-chained (a key must be deletable), so its rows
    are checked against what the chained log says about them:

    - every key id an envelope of an event uses must be in ``chatledger_keys``,
      unless an erasure record in the log (a ``Visitor.DataErased`` receipt)
      names it, or ``chatledger_destroyed_keys`` holds the id and a receipt
      recorded after the key's first use names the session of that use (the
      unchained tables alone explain nothing): else ``missing key``;
    - each key present must open the first envelope made with it (AES-GCM
      authenticates key and ciphertext together, so the envelope, covered by
      the chain, is the key's check value): else ``altered key``;
    - a key an erasure record names must not be present: else ``resurrected key``.

    Memory: one key id per key, plus the position of each key that is missing.
    """

    def __init__(self, report: Any, *, whole_log: bool) -> None:
        self.report = report
        self.whole_log = whole_log
        self._seen: set[str] = set()
        self._pending: dict[str, Any] = {}
        self._present: set[str] = set()
        self._missing: dict[str, tuple[int, UUID, int]] = {}
        self._erased_kids: set[str] = set()
        self._erased_sessions: dict[str, int] = {}  # session id -> position of its last erasure

    def watch(self, events: Iterable[Any], tables: KeyTables) -> Iterator[Any]:
        """Yield ``events`` (``EventRow``s) unchanged, noting the keys they use."""
        for row in events:
            state = row.state
            if row.topic == ERASURE_TOPIC:
                self._note_erasure(row.notification_id, state)
            elif b'"$enc"' in state:
                for raw in _ENVELOPE_KID.findall(state):
                    kid = raw.decode()
                    if kid not in self._seen:
                        self._seen.add(kid)
                        self._pending[kid] = row
                if len(self._pending) >= KEY_CHECK_BATCH:
                    self._check(tables)
            yield row

    def _note_erasure(self, position: int, state: bytes) -> None:
        try:
            # Upcast like any decoder would: a later DataErased may reshape it.
            data = upcast(resolve_topic(ERASURE_TOPIC), json.loads(state), None, None)
            receipt = data["receipt"]
            self._erased_kids.update(receipt["key_ids"])
            for sid in receipt["session_ids"]:
                key = str(UUID(str(sid)))
                self._erased_sessions[key] = max(position, self._erased_sessions.get(key, 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # an altered erasure event: the chain reports it

    def _check(self, tables: KeyTables) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        found = tables.keys(list(pending))
        for kid, row in pending.items():
            entry = found.get(kid)
            if entry is None:
                self._missing[kid] = (row.notification_id, row.originator_id, row.originator_version)
                continue
            self._present.add(kid)
            if not _key_opens(row, kid, entry[1]):
                self._add(
                    "altered key", row.notification_id, row.originator_id, row.originator_version,
                    f"content key {kid} of visitor {entry[0]!r} does not open the envelope this event "
                    "made with it: the key row was overwritten (or this event altered)",
                )

    def finish(self, tables: KeyTables) -> None:
        """Check the keys not checked yet and report what the log does not account for."""
        self._check(tables)
        unexplained = [kid for kid in self._missing if kid not in self._erased_kids]
        if unexplained and not self.whole_log:
            # One aggregate's events were read: the receipts are on the visitors.
            for position, state in tables.erasure_states():
                self._note_erasure(position, state)
            unexplained = [kid for kid in unexplained if kid not in self._erased_kids]
        if unexplained:
            destroyed = tables.destroyed(unexplained)
            owners = tables.subjects(sorted({self._missing[k][1] for k in unexplained}))
            for kid in unexplained:
                position, oid, version = self._missing[kid]
                visitor = owners.get(oid)
                # Destroyed by an erasure of the session the key was first used in,
                # recorded after that use (it deletes every key of the visitor).
                if kid in destroyed and self._erased_sessions.get(str(oid), 0) > position:
                    continue
                who = f"visitor {visitor!r}" if visitor is not None else "an unknown visitor"
                self._add(
                    "missing key", position, oid, version,
                    f"content key {kid} of {who} is not in chatledger_keys and no erasure record "
                    "in the log destroyed it: the key row was deleted outside the ledger, "
                    "and the content reads as erased",
                )
        for kid in sorted(self._present & self._erased_kids):
            self._add(
                "resurrected key", 0, UUID(int=0), 0,
                f"content key {kid} was destroyed by an erasure recorded in the log but is in "
                "chatledger_keys again: erased content is readable",
            )

    def _add(self, kind: str, position: int, oid: UUID, version: int, detail: str) -> None:
        self.report.add(ChainBreak(kind, position, str(oid), version, detail))


def _key_opens(row: Any, kid: str, key: bytes) -> bool:
    """Does ``key`` open the first envelope of ``row`` made under ``kid``?

    Every envelope counts, wherever it is in the event (not only at today's
    personal paths): an event stored at an older version may have had its
    personal fields elsewhere."""
    try:
        data = json.loads(row.state)
    except ValueError:
        return True  # not JSON: the chain reports the altered event
    aad_id = str(row.originator_id)
    for node, leaf, concrete in _envelopes(data, []):
        envelope = node[leaf]
        if envelope["kid"] == kid:
            aad = json.dumps([aad_id, str(row.originator_version), *concrete]).encode()
            try:
                sealed = binascii.a2b_base64(envelope["$enc"])
                AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
            except (InvalidTag, binascii.Error, ValueError):
                return False
            return True
    return True  # no envelope (not an event chatledger encrypts): nothing to check against
