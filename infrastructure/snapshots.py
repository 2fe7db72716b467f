"""Snapshots that do not pile up: each aggregate keeps only its newest one.

eventsourcing stores a snapshot as one more row per aggregate and version, and
never removes the older ones. A snapshot of a session holds its whole state, so
a conversation of n messages snapshotted every k events would store about
n²/2k messages' worth of snapshots (the unbounded checkpoint growth LangGraph
users run into). Only the newest snapshot is ever read for the current state,
so these recorders delete the older ones of the same aggregate in the
transaction that inserts the new one. Snapshots stay derived data: reads at an
older version (``Repository.get(version=…)``) replay from the events, and
point-in-time reads always do.

The recorders are per dialect (``sqlite/snapshots.py``, ``postgres/snapshots.py``),
selected with eventsourcing's ``PERSISTENCE_MODULE`` (a factory class topic),
see :func:`chatledger.infrastructure.persistence.eventsourcing_env`; this
module holds what they share and the snapshot store.

Snapshots carry the version of their class (``Session.Snapshot.class_version``,
stored as ``class_version`` when above 1, like an event's). A snapshot stored
at another version than its class has now is never upcast and never mis-read:
:class:`SnapshotStore` passes over it, the aggregate is replayed from its
events, and the next snapshot due replaces it.
"""

from __future__ import annotations

import copy
import threading
from binascii import Error as BinasciiError
from binascii import a2b_base64
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload
from uuid import UUID

from cryptography.exceptions import InvalidTag
from eventsourcing.persistence import EventStore, StoredEvent
from eventsourcing.utils import get_topic
from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from ..domain.conversation import Message
from ..domain.messages import StoredMessages
from ..domain.pydantic_aggregates import StaleSnapshot
from ..domain.session import Session
from .envelopes import KID_PATTERN, loads_plain
from .recording import KeyedStoredEvent

MESSAGE_TOPICS = frozenset({get_topic(Session.MessageReceived), get_topic(Session.MessageSent)})
_MESSAGE_LIST: TypeAdapter[list[Message]] = TypeAdapter(list[Message])
_PERSONAL = ("text", "client_message_id", "metadata")
_CLASS_VERSIONS = {get_topic(cls): cls.class_version for cls in (Session.MessageReceived, Session.MessageSent)}


class SnapshotKeyGone(Exception):
    """A snapshot's key is not (or no longer) in the store: the snapshot is not written."""


def used_keys(stored_events: Sequence[StoredEvent]) -> dict[str, str]:
    """``kid -> visitor`` of the keys the snapshots' envelopes were made with."""
    return {s.kid: s.visitor_id for s in stored_events if isinstance(s, KeyedStoredEvent) and s.kid is not None}


def newest_versions(stored_events: Sequence[StoredEvent]) -> dict[UUID, int]:
    """``aggregate -> newest version`` among the snapshots (older ones are pruned)."""
    newest: dict[UUID, int] = {}
    for stored in stored_events:
        oid = UUID(str(stored.originator_id))
        newest[oid] = max(newest.get(oid, 0), stored.originator_version)
    return newest


class PinnedKeys:
    """The keys a set of stored events is under, taken from the key ring once
    (destroyed ones as such): decoding with them needs no store (see
    :meth:`MessageEvents.pinned`). A key not taken up front is asked of the
    ring when it is first met."""

    def __init__(self, ring: Any, kids: Iterable[str]) -> None:
        self._ring = ring
        self._by_kid: dict[str, tuple[float, Any]] = {}
        self._erased: set[str] = set()
        for kid in set(kids):
            self.decryption_key(kid)

    def decryption_key(self, kid: str) -> Any:
        if kid in self._erased:
            return None
        cached = self._by_kid.get(kid)
        if cached is not None:
            return cached[1]
        aead = self._ring.decryption_key(kid)
        if aead is None:
            self._erased.add(kid)
        else:
            self._by_kid[kid] = (float("inf"), aead)
        return aead

    def cache_views(self) -> tuple[dict[str, tuple[float, Any]], set[str]]:
        return self._by_kid, self._erased


class MessageEvents(StoredMessages):
    """The first ``count`` messages of a session, read from its events up to a
    snapshot's version when the first of them is asked for (one ``SELECT``),
    each decoded (decrypted, validated) when it is asked for.

    Stored events never change, so the rows read later are the rows there were
    at the snapshot; a key destroyed in between makes them read as erased, as a
    replay would. Shared, read-only, by every cached copy of the session."""

    def __init__(
        self, events: EventStore[UUID], session_id: UUID, version: int, count: int, mapper: Any = None
    ) -> None:
        self.events = events
        self.mapper: Any = mapper if mapper is not None else events.mapper
        self.session_id = session_id
        self.version = version
        self.size = count
        self._rows: list[tuple[int, str, bytes]] | None = None
        self._messages: list[Message | None] = [None] * count
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def rows(self) -> list[tuple[int, str, bytes]]:
        """``(version, topic, state)`` of the message events (read once)."""
        rows = self._rows
        if rows is not None:
            return rows
        with self._lock:
            if self._rows is None:
                recorder = self.events.recorder
                select = getattr(recorder, "select_events_of_topics", None)
                if select is not None:
                    found = select(self.session_id, self.version, sorted(MESSAGE_TOPICS))[: self.size]
                else:
                    found = [
                        (r.originator_version, r.topic, r.state)
                        for r in recorder.select_events(self.session_id, lte=self.version)
                        if r.topic in MESSAGE_TOPICS
                    ][: self.size]
                if len(found) != self.size:
                    msg = f"Session {self.session_id} has {len(found)} messages up to version {self.version}, not {self.size}."
                    raise LookupError(msg)
                self._rows = found
            return self._rows

    def pinned(self) -> MessageEvents:
        """The same messages, decoded with the keys they are under as they are
        now (read here, with the rows): readable after the ledger is closed."""
        rows = self.rows()
        ring: Any = getattr(self.mapper, "key_ring", None)
        if ring is None:
            return self
        mapper = copy.copy(self.mapper)
        # A session's events are under its visitor's key (one at a time: a new
        # one only after an erasure), so the first and last rows name them all
        # but in a session erased more than once; any other is met on reading.
        ends = (rows[0][2], rows[-1][2]) if rows else ()
        mapper.key_ring = PinnedKeys(ring, (m.group(1).decode() for m in map(KID_PATTERN.search, ends) if m))
        pinned = MessageEvents(self.events, self.session_id, self.version, self.size, mapper)
        pinned._rows = rows
        pinned._messages = self._messages  # decoded once for the aggregate and every state read from it
        return pinned

    def _at(self, i: int) -> Message:
        message = self._messages[i]
        if message is None:
            message = self._messages[i] = self._decode_one(i)
        return message

    def _decode_one(self, i: int) -> Message:
        """Message ``i`` through the mapper's general path (an event stored at
        another version, or under a key that is gone)."""
        version, topic, state = self.rows()[i]
        event = self.mapper.to_domain_event(StoredEvent(self.session_id, version, topic, state))
        assert isinstance(event, Session.MessageRecorded)
        return event.message(i)

    def _decode_range(self, start: int, stop: int) -> list[Message]:
        """Messages ``start`` to ``stop`` (step 1), the ones not yet decoded
        decoded in one pass: each key looked up once, each envelope opened
        with it, the messages validated by one ``TypeAdapter`` call. A row
        this path does not cover (another class version, an erased key, an
        envelope that does not open, a field not where the current class has
        it) goes through :meth:`_decode_one`, so every message reads exactly as
        a replay gives it (or raises as a replay does)."""
        messages = self._messages
        todo = [i for i in range(start, stop) if messages[i] is None]
        if todo:
            rows = self.rows()
            ring: Any = getattr(self.mapper, "key_ring", None)
            keys: dict[str, Any] = {}
            prefix = f'["{self.session_id}", "'
            fast: list[int] = []
            values: list[dict[str, Any]] = []
            slow: list[int] = []
            for i in todo:
                version, topic, state = rows[i]
                data: dict[str, Any] = from_json(state)
                try:
                    if data.get("class_version", 1) != _CLASS_VERSIONS[topic]:
                        raise LookupError  # stored at another version: upcast on the general path
                    for name in _PERSONAL:
                        envelope = data[name]
                        if type(envelope) is not dict or "$enc" not in envelope:
                            continue
                        kid = envelope["kid"]
                        aead = keys.get(kid)
                        if aead is None:
                            aead = keys[kid] = ring.decryption_key(kid)  # None (erased): AttributeError
                        sealed = a2b_base64(envelope["$enc"])
                        aad = f'{prefix}{version}", "{name}"]'.encode()
                        data[name] = loads_plain(aead.decrypt(sealed[:12], sealed[12:], aad))
                    values.append(
                        {
                            "position": i,
                            "role": data["role"],
                            "text": data["text"],
                            "at": data["occurred_at"],
                            "client_message_id": data["client_message_id"],
                            "metadata": data["metadata"],
                        }
                    )
                    fast.append(i)
                except (LookupError, AttributeError, TypeError, ValueError, InvalidTag, BinasciiError):
                    slow.append(i)
            try:
                decoded = _MESSAGE_LIST.validate_python(values)
            except ValidationError:
                fast, decoded, slow = [], [], todo  # the general path says which and why
            for i, message in zip(fast, decoded, strict=True):
                messages[i] = message
            for i in slow:
                messages[i] = self._decode_one(i)
        return [m if m is not None else self._at(start + k) for k, m in enumerate(messages[start:stop])]

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step == 1:
                return self._decode_range(start, max(start, stop))
            return [self._at(i) for i in range(start, stop, step)]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError("message index out of range")
        return self._at(index)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._decode_range(0, self.size))


class SnapshotStore(EventStore[UUID]):
    """The snapshot store: a snapshot stored at another version than its class's
    (:class:`~chatledger.domain.pydantic_aggregates.StaleSnapshot`) is passed over, so the
    repository replays the aggregate from its events instead. A session's
    snapshot gets its messages from ``events`` (:class:`StoredMessages`)."""

    def __init__(self, mapper: Any, recorder: Any, events: EventStore[UUID] | None = None) -> None:
        super().__init__(mapper=mapper, recorder=recorder)
        self.message_events = events

    def get(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[Any]:
        decode = self.mapper.to_domain_event
        for stored in self.recorder.select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit):
            try:
                snapshot = decode(stored)
            except StaleSnapshot:
                continue
            if isinstance(snapshot, Session.Snapshot) and self.message_events is not None:
                count = int(vars(snapshot.state)["message_count"])
                oid = UUID(str(stored.originator_id)) if not isinstance(stored.originator_id, UUID) else stored.originator_id
                snapshot = snapshot.with_stored_messages(
                    MessageEvents(self.message_events, oid, stored.originator_version, count)
                )
            yield snapshot

