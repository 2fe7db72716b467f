"""Tamper evidence: SHA-256 hash chains over the stored event log.

Since 0.3 the writers compute ``event_hash`` only and store an empty
``log_hash``; the log-wide half is the seal of
:mod:`~chatledger.infrastructure.sealing`, computed behind the writers. Rows
written before carry the legacy ``log_hash`` below, still verified.

Every stored event gets a row in ``chatledger_event_hashes``, written by the
recorder (:mod:`chatledger.infrastructure.recording`) in the same transaction
as the event itself:

- ``event_hash = H("chatledger/event/v1", prev_event_hash, originator_id,
  originator_version, topic, state)`` where ``prev_event_hash`` is the
  ``event_hash`` of the previous version of the same aggregate (32 zero bytes
  for version 1) and ``state`` the bytes exactly as stored (ciphertext for
  personal fields, see :mod:`chatledger.infrastructure.shredding_mapper`);
- ``log_hash = H("chatledger/log/v1", prev_log_hash, notification_id,
  originator_id, originator_version, event_hash)`` where ``prev_log_hash`` is
  the ``log_hash`` of the previous row in notification order.

Each field is length-prefixed, so no two different inputs hash alike by
concatenation. :func:`verify_rows` re-checks every link against the stored
rows and reports the breaks in log order. The key table, which cannot be
chained (erasure deletes its rows), is checked against the chained log in the
same pass by ``key_audit.KeyAudit`` (``missing key``, ``altered key``,
``resurrected key`` breaks, reported after the chain's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
import json
from hashlib import sha256
from itertools import islice
from operator import itemgetter, lt
from typing import TYPE_CHECKING, NamedTuple
from uuid import UUID

if TYPE_CHECKING:
    from eventsourcing.persistence import StoredEvent

GENESIS = bytes(32)
_EVENT_TAG = b"chatledger/event/v1"  # as in event_hash
_LOG_TAG = b"chatledger/log/v1"  # as in log_hash
MAX_REPORTED_BREAKS = 20


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def canonical_id(originator_id: UUID | str) -> bytes:
    return str(originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))).encode()


def event_hash(prev: bytes, originator_id: UUID | str, version: int, topic: str, state: bytes) -> bytes:
    h = sha256(b"chatledger/event/v1")
    for part in (prev, canonical_id(originator_id), str(version).encode(), topic.encode(), state):
        h.update(_field(part))
    return h.digest()


def log_hash(
    prev: bytes, notification_id: int, originator_id: UUID | str, version: int, ev_hash: bytes
) -> bytes:
    h = sha256(b"chatledger/log/v1")
    for part in (
        prev,
        str(notification_id).encode(),
        canonical_id(originator_id),
        str(version).encode(),
        ev_hash,
    ):
        h.update(_field(part))
    return h.digest()


class Removed(NamedTuple):
    """A session retention removed, as its record in the log names it."""

    last_version: int
    head_hash: str  # hex event_hash of the last version
    archive: str


def removed_sessions(states: Iterable[bytes]) -> dict[UUID, Removed]:
    """The sessions the stored ``RetentionRecord.Removed`` events name (an unreadable
    one names none: its own chain reports it altered)."""
    removed: dict[UUID, Removed] = {}
    for state in states:
        try:
            for s in json.loads(state)["sessions"]:
                removed[UUID(s["session_id"])] = Removed(int(s["last_version"]), str(s["head_hash"]), str(s["archive"]))
        except (ValueError, KeyError, TypeError):
            continue
    return removed


class EventRow(NamedTuple):
    notification_id: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


class HashRow(NamedTuple):
    notification_id: int
    originator_id: UUID
    originator_version: int
    event_hash: bytes
    log_hash: bytes


@dataclass(frozen=True)
class ChainBreak:
    """One link that does not hold. ``position`` is the notification id."""

    kind: str
    position: int
    originator_id: str
    version: int
    detail: str

    def describe(self) -> str:
        return (
            f"{self.kind} at log position {self.position} "
            f"(aggregate {self.originator_id} version {self.version}): {self.detail}"
        )


@dataclass
class VerificationReport:
    """What ``verify`` checked and the breaks it found (first one first)."""

    scope: str
    checked: int = 0
    head_position: int = 0
    head_hash: str = ""
    breaks: list[ChainBreak] = field(default_factory=list)
    break_count: int = 0
    sealed_through: int = 0  # the last notification id the newest seal covers
    seal_root: str = ""  # that seal's root (hex)
    seals: int = 0
    tail_count: int = 0  # hash rows after the sealed range: only per-aggregate chained
    tail_first: tuple[UUID, int] | None = None  # (aggregate, version) of the oldest of them
    tail_age_s: float | None = None  # how long ago it occurred (business clock)
    removed: int = 0  # chain rows whose events retention removed, as its records say
    removed_by_archive: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.break_count == 0

    @property
    def first_break(self) -> ChainBreak | None:
        return self.breaks[0] if self.breaks else None

    def tail_within(self, max_events: int, max_age_s: float) -> bool:
        """Whether the unsealed tail is at most ``max_events`` long and ``max_age_s`` old."""
        return self.tail_count <= max_events and (self.tail_age_s or 0.0) <= max_age_s

    def add(self, brk: ChainBreak) -> None:
        self.break_count += 1
        if len(self.breaks) < MAX_REPORTED_BREAKS:
            self.breaks.append(brk)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "scope": self.scope,
            "checked_events": self.checked,
            "head_position": self.head_position,
            "head_log_hash": self.head_hash,
            "sealed_through": self.sealed_through,
            "seal_root": self.seal_root,
            "seals": self.seals,
            "unsealed_tail": {"count": self.tail_count, "age_seconds": self.tail_age_s},
            "removed_by_retention": {"events": self.removed, "archives": dict(self.removed_by_archive)},
            "break_count": self.break_count,
            "breaks": [vars(b) for b in self.breaks],
        }


def verify_rows(
    events: Iterable[EventRow],
    hashes: Iterable[HashRow],
    report: VerificationReport,
    *,
    check_log_chain: bool = True,
    prev_log_hash: dict[int, bytes] | None = None,
    removed: dict[UUID, Removed] | None = None,
) -> VerificationReport:
    """Merge-join events and hash rows (both in notification order) and check each link.

    Each link is checked against the *stored* hashes of its predecessors, so one
    altered row is reported once instead of breaking everything after it, and a
    row re-hashed by hand breaks its successor's link instead.
    ``prev_log_hash`` maps a position to the stored log hash of the row before it,
    for a partial (one-aggregate) verification with ``check_log_chain=False``.
    ``removed``: the sessions retention removed (:func:`removed_sessions`); their
    chain rows without events are counted as removed, not as missing events, and
    the row of each one's last version must hold the record's head hash.
    """
    removed = removed or {}
    last: dict[UUID, tuple[int, bytes]] = {}
    prev_log = GENESIS
    ev_it: Iterator[EventRow] = iter(events)
    h_it: Iterator[HashRow] = iter(hashes)
    e = next(ev_it, None)
    h = next(h_it, None)
    while e is not None or h is not None:
        if h is None or (e is not None and e.notification_id < h.notification_id):
            assert e is not None
            report.checked += 1
            report.add(
                ChainBreak(
                    "unchained event", e.notification_id, str(e.originator_id), e.originator_version,
                    "a stored event has no hash-chain row: it was inserted or moved outside the ledger",
                )
            )
            e = next(ev_it, None)
            continue
        if e is None or h.notification_id < e.notification_id:
            gone = removed.get(h.originator_id)
            if gone is not None and h.originator_version <= gone.last_version:
                _count_removed(report, h, gone)
            else:
                report.add(
                    ChainBreak(
                        "missing event", h.notification_id, str(h.originator_id), h.originator_version,
                        "the chain records an event here but the log has none: it was deleted",
                    )
                )
            last[h.originator_id] = (h.originator_version, h.event_hash)
            prev_log = h.log_hash
            report.head_position, report.head_hash = h.notification_id, h.log_hash.hex()
            h = next(h_it, None)
            continue
        report.checked += 1
        nid = e.notification_id
        if (e.originator_id, e.originator_version) != (h.originator_id, h.originator_version):
            report.add(
                ChainBreak(
                    "reordered event", nid, str(e.originator_id), e.originator_version,
                    f"the chain records {h.originator_id} version {h.originator_version} at this position",
                )
            )
        expected_version, prev = last.get(e.originator_id, (0, GENESIS))
        if e.originator_version != expected_version + 1:
            report.add(
                ChainBreak(
                    "version gap", nid, str(e.originator_id), e.originator_version,
                    f"expected version {expected_version + 1} of this aggregate next",
                )
            )
        recomputed = event_hash(prev, e.originator_id, e.originator_version, e.topic, e.state)
        if recomputed != h.event_hash:
            report.add(
                ChainBreak(
                    "altered event", nid, str(e.originator_id), e.originator_version,
                    "the event's hash does not match its stored content (payload, topic, "
                    "version or predecessor changed)",
                )
            )
        if prev_log_hash is not None:
            prev_log = prev_log_hash.get(nid, GENESIS)
        if h.log_hash and (check_log_chain or prev_log_hash is not None):  # a legacy (0.x) row
            expected_log = log_hash(prev_log, nid, e.originator_id, e.originator_version, h.event_hash)
            if expected_log != h.log_hash:
                report.add(
                    ChainBreak(
                        "broken log chain", nid, str(e.originator_id), e.originator_version,
                        "the log-wide chain does not continue from the previous position "
                        "(events before it were deleted, inserted or re-hashed)",
                    )
                )
        last[e.originator_id] = (e.originator_version, h.event_hash)
        prev_log = h.log_hash
        report.head_position = nid
        report.head_hash = h.log_hash.hex()
        e = next(ev_it, None)
        h = next(h_it, None)
    return report


def _count_removed(report: VerificationReport, h: HashRow, gone: Removed) -> None:
    report.removed += 1
    report.removed_by_archive[gone.archive] = report.removed_by_archive.get(gone.archive, 0) + 1
    if h.originator_version == gone.last_version and h.event_hash.hex() != gone.head_hash:
        report.add(
            ChainBreak(
                "altered removed event", h.notification_id, str(h.originator_id), h.originator_version,
                "the chain row of a session retention removed does not hold the hash its retention "
                "record names: the chain row was changed after the removal",
            )
        )


# --------------------------------------------------------------------------- writing


def chain_rows(
    stored_events: Sequence[StoredEvent],
    notification_ids: Sequence[int],
    prev_event_hashes: dict[UUID, bytes],
    prev_log: bytes | None,
) -> list[tuple[int, UUID, int, bytes, bytes]]:
    """The hash rows of a batch: ``(notification_id, originator_id, version, event_hash, log_hash)``."""
    oids = [as_uuid(s.originator_id) for s in stored_events]
    rows = chain_rows_by_hex(
        stored_events,
        oids,
        [oid.hex for oid in oids],
        notification_ids,
        {oid.hex: h for oid, h in prev_event_hashes.items()},
        prev_log,
    )
    return [(nid, oid, v, ev, lh) for nid, oid, _, v, ev, lh in rows]


def chain_rows_by_hex(
    stored_events: Sequence[StoredEvent],
    oids: Sequence[UUID],
    hexes: Sequence[str],
    notification_ids: Sequence[int],
    prev_by_hex: dict[str, bytes],
    prev_log: bytes | None,
) -> list[tuple[int, UUID, str, int, bytes, bytes]]:
    """:func:`chain_rows` with the ids given as UUIDs and hex (``prev_by_hex`` is updated).

    The same digests as :func:`~chatledger.infrastructure.hashchain.event_hash`
    and :func:`~chatledger.infrastructure.hashchain.log_hash` (which verification
    uses, and a test compares), computed with each field encoded once per event
    and one ``sha256`` call per digest: a sweep hashes thousands of events per
    transaction.
    """
    rows = []
    last = prev_by_hex
    topic_fields: dict[str, bytes] = {}
    items: Iterable[tuple[StoredEvent, UUID, str, int]] = zip(
        stored_events, oids, hexes, notification_ids, strict=True
    )
    if not all(map(lt, notification_ids, islice(notification_ids, 1, None))):
        items = sorted(items, key=itemgetter(3))  # chained in notification order
    for stored, oid, hex_id, nid in items:
        id_field = _field(str(oid).encode())
        version = stored.originator_version
        version_field = _field(str(version).encode())
        topic_field = topic_fields.get(stored.topic)
        if topic_field is None:
            topic_field = topic_fields[stored.topic] = _field(stored.topic.encode())
        ev = sha256(
            b"".join(
                (_EVENT_TAG, _field(last.get(hex_id, GENESIS)), id_field, version_field, topic_field, _field(stored.state))
            )
        ).digest()
        if prev_log is not None:  # the legacy log-wide chain (tests compare its digests)
            prev_log = sha256(
                b"".join((_LOG_TAG, _field(prev_log), _field(str(nid).encode()), id_field, version_field, _field(ev)))
            ).digest()
        last[hex_id] = ev
        rows.append((nid, oid, hex_id, version, ev, prev_log if prev_log is not None else b""))
    return rows


def as_uuid(originator_id: UUID | str) -> UUID:
    return originator_id if isinstance(originator_id, UUID) else UUID(str(originator_id))

