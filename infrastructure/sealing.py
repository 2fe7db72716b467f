"""The log seal: the log-wide half of tamper evidence, off the writers' lock.

Writers chain each aggregate's events only (``event_hash``, see
:mod:`~chatledger.infrastructure.hashchain`); the version already orders them,
so no writer reads a log-wide head. A follower behind the writers, the
*sealer*, reads the committed hash rows in notification order and writes one
row per range into ``chatledger_seals``::

    root = H("chatledger/seal/v1", prev_root, first, last, count,
             (notification_id, originator_id, version, event_hash) of every row in first..last)

where ``prev_root`` is the previous seal's root (32 zero bytes for the first).
Each seal row is its own tracked position (the next range starts after the last
seal's ``last_id``) and is written in one transaction, so two sealers cannot
both seal a range (the ``seq`` key refuses the second).

No event committed out of order can be skipped: the sealer only takes rows
above the last seal, and only ids that no transaction still in flight can hold
below them. On PostgreSQL eventsourcing assigns notification ids under
``LOCK TABLE … IN EXCLUSIVE MODE`` held through COMMIT, so when an id is
visible every smaller id is committed or rolled back for good (committed order
= id order); the ledger recorder refuses a configuration without that lock.
On SQLite there is one writer and rowids are the table's largest + 1, so the
same holds. A burnt id (rolled back on PostgreSQL) is simply absent from the
range: the seal counts and hashes the rows that are there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import NamedTuple
from uuid import UUID

from .hashchain import GENESIS, ChainBreak, HashRow, VerificationReport, canonical_id

SEALS = "chatledger_seals"
_SEAL_TAG = b"chatledger/seal/v1"


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def seal_root(prev_root: bytes, first: int, last: int, rows: Iterable[tuple[int, UUID, int, bytes]]) -> tuple[bytes, int]:
    """The root of a seal over ``rows`` (``(notification_id, originator_id, version, event_hash)``
    in notification order) and how many rows it covers."""
    body = sha256()
    count = 0
    for nid, oid, version, ev in rows:
        body.update(b"".join((_field(str(nid).encode()), _field(canonical_id(oid)), _field(str(version).encode()), _field(ev))))
        count += 1
    head = b"".join((_SEAL_TAG, _field(prev_root), _field(str(first).encode()), _field(str(last).encode()),
                     _field(str(count).encode()), _field(body.digest())))
    return sha256(head).digest(), count


class Seal(NamedTuple):
    seq: int
    first_id: int
    last_id: int
    event_count: int
    root: bytes


@dataclass(frozen=True)
class Anchor:
    """A published seal: ``ROOT@POSITION`` (hex root, the seal's last notification id)."""

    root: bytes
    position: int

    def __str__(self) -> str:
        return f"{self.root.hex()}@{self.position}"

    @classmethod
    def parse(cls, text: str) -> Anchor:
        root, sep, pos = text.strip().partition("@")
        try:
            anchor = cls(bytes.fromhex(root), int(pos))
        except ValueError:
            anchor = None
        if not sep or anchor is None or len(anchor.root) != 32 or anchor.position < 1:
            raise ValueError(f"an anchor is ROOT@POSITION (64 hex digits, a position >= 1), not {text!r}")
        return anchor


def next_seal(last: Seal | None, rows: list[tuple[int, UUID, int, bytes]]) -> Seal | None:
    """The seal after ``last`` over ``rows`` (the hash rows after it, in order), if any."""
    if not rows:
        return None
    first = last.last_id + 1 if last else 1
    root, count = seal_root(last.root if last else GENESIS, first, rows[-1][0], rows)
    return Seal(last.seq + 1 if last else 1, first, rows[-1][0], count, root)


def check_seals(
    seals: Iterable[Seal], hashes: Iterable[HashRow], report: VerificationReport, anchor: Anchor | None = None,
    verified: Sequence[Seal] = (),
) -> VerificationReport:
    """Recompute every seal from the hash rows and check the anchor (the verify half of the sealer).

    A seal whose recomputed root or count differs from the stored one is a
    ``broken seal`` (rows of its range were deleted, inserted, moved or
    re-hashed, or the seal row edited). Seals must follow one another without a
    gap. The stored root of each seal is the next one's predecessor, so one
    change is reported once; the anchor is compared with the root recomputed
    from the rows all the way from the start, so any change before it shows.

    ``verified`` (an incremental check): the seals an earlier check verified; ``hashes`` then
    start after the last of them. Their stored rows must be unchanged (else ``broken seal``);
    their ranges are not re-hashed, and the seals after them chain on from the last one's root.
    """
    h_it: Iterator[HashRow] = iter(hashes)
    pending = next(h_it, None)
    stored_prev = GENESIS
    true_prev = GENESIS
    expected_first = 1
    recomputed_at: dict[int, bytes] = {}
    trusted = {s.seq: s for s in verified}
    if verified:
        last = verified[-1]
        stored_prev = true_prev = last.root
        expected_first = last.last_id + 1
        report.sealed_through, report.seal_root, report.seals = last.last_id, last.root.hex(), last.seq
    for seal in seals:
        if seal.seq in trusted:
            if trusted.pop(seal.seq) != seal:
                report.add(ChainBreak("broken seal", seal.first_id, "", 0,
                                      f"seal {seal.seq} over positions {seal.first_id}-{seal.last_id} is not "
                                      "the row an earlier check verified: the seal was rewritten"))
            report.checked_seals.append(seal)
            continue
        rows = []
        while pending is not None and pending.notification_id <= seal.last_id:
            rows.append((pending.notification_id, pending.originator_id, pending.originator_version, pending.event_hash))
            pending = next(h_it, None)
        rows_in = [r for r in rows if r[0] >= seal.first_id]
        root, count = seal_root(stored_prev, seal.first_id, seal.last_id, rows_in)
        true_root, _ = seal_root(true_prev, seal.first_id, seal.last_id, rows_in)
        if seal.first_id != expected_first or len(rows_in) != len(rows):
            report.add(ChainBreak("broken seal", seal.first_id, "", 0,
                                  f"seal {seal.seq} starts at {seal.first_id}, not {expected_first}: "
                                  "a seal was deleted or its range moved"))
        elif (root, count) != (seal.root, seal.event_count):
            report.add(ChainBreak("broken seal", seal.first_id, "", 0,
                                  f"seal {seal.seq} over positions {seal.first_id}-{seal.last_id} sealed "
                                  f"{seal.event_count} events, {count} there now, and its root does not match: "
                                  "events of the range were deleted, inserted, moved or re-hashed"))
        recomputed_at[seal.last_id] = true_root
        report.checked_seals.append(seal)
        stored_prev, true_prev, expected_first = seal.root, true_root, seal.last_id + 1
        report.sealed_through, report.seal_root, report.seals = seal.last_id, seal.root.hex(), seal.seq
    for seal in trusted.values():
        report.add(ChainBreak("broken seal", seal.first_id, "", 0,
                              f"seal {seal.seq}, verified by an earlier check, was deleted"))
    tail = 0
    while pending is not None:
        if tail == 0:
            report.tail_first = (pending.originator_id, pending.originator_version)
        tail += 1
        pending = next(h_it, None)
    report.tail_count = tail
    if anchor is not None:
        found = recomputed_at.get(anchor.position)
        if found is None:
            report.add(ChainBreak("truncated log", anchor.position, "", 0,
                                  f"no seal ends at the anchor's position {anchor.position} (sealed through "
                                  f"{report.sealed_through}): the log was truncated or its seals rewritten"))
        elif found != anchor.root:
            report.add(ChainBreak("anchor mismatch", anchor.position, "", 0,
                                  "the log up to the anchor's position no longer hashes to the anchor's root: "
                                  "events before it were changed"))
    return report
