"""The key ring: content keys by visitor, cached briefly and boundedly.

Keys never leave this module, the mapper and the recorders: they are not
logged, not exported and not part of any ``repr``.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias
from uuid import UUID, uuid4

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..domain.batching import batched
from .recording import KeyRow

if TYPE_CHECKING:
    from .postgres import PostgresLedgerRecorder
    from .sqlite import SQLiteLedgerRecorder

    LedgerRecorder: TypeAlias = "SQLiteLedgerRecorder | PostgresLedgerRecorder"

KEY_CACHE_TTL_S = 30.0
MAX_CACHED_KEYS = 20_000
"""Bound of each of the key ring's caches (one AES key object is ~2.6 KB): they
must not grow with the number of visitors a long-running process has met."""


def bounded(cache: dict[Any, Any] | set[Any], now: float | None = None) -> None:
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
    made in memory, and the recorder inserts it (and a new session's key-owner row)
    in the transaction of the events encrypted with it, where it also checks
    that every key those events use is in the store and is their visitor's. A
    key destroyed by an erasure elsewhere, or a visitor whose key another writer
    created first, fails that check: nothing is written, the recorder tells this
    ring (:meth:`_on_stale_keys`, with the visitor's current key) and raises a
    conflict, and the command re-runs with the right key.
    """

    def __init__(self, recorder: LedgerRecorder) -> None:
        self.recorder = recorder
        self._lock = threading.Lock()
        self._key_owners: dict[UUID, str | None] = {}
        # visitor -> (cached at, key row, confirmed: the row is known to be committed)
        self._active: dict[str, tuple[float, KeyRow, bool]] = {}
        self._by_kid: dict[str, tuple[float, AESGCM]] = {}
        self._erased: set[str] = set()
        recorder.on_stale_keys = self._on_stale_keys
        recorder.on_keys_confirmed = self._on_keys_confirmed

    def cache_views(self) -> tuple[dict[str, tuple[float, AESGCM]], set[str]]:
        """The live caches ``kid -> (cached at, key)`` and erased kids, for a
        decoder's lock-free fast path (read only; see :meth:`decryption_key`)."""
        return self._by_kid, self._erased

    def __repr__(self) -> str:
        return f"KeyRing({type(self.recorder).__name__})"

    def remember_key_owner(self, aggregate_id: UUID, visitor_id: str) -> None:
        """``aggregate_id`` is a session of ``visitor_id`` (its ``Started`` event is
        being encoded; the recorder stores the row with it)."""
        with self._lock:
            bounded(self._key_owners)
            self._key_owners[aggregate_id] = visitor_id

    def key_owner_of(self, aggregate_id: UUID) -> str | None:
        with self._lock:
            if aggregate_id in self._key_owners:
                return self._key_owners[aggregate_id]
        owner = self.recorder.key_owner_of(aggregate_id)
        if owner is not None:
            with self._lock:
                bounded(self._key_owners)
                self._key_owners[aggregate_id] = owner
        return owner

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
        visitor_id = self.key_owner_of(aggregate_id)
        if visitor_id is None:
            return None
        with self._lock:
            cached = self._active.get(visitor_id)
        if cached is None:
            row = None if new_session else self.recorder.active_key(visitor_id)
            confirmed = row is not None
            if row is None:  # wrapped by the key provider outside the lock and any transaction
                row = self.recorder.new_key_row(str(uuid4()), visitor_id, secrets.token_bytes(32))
            now = time.monotonic()
            with self._lock:
                cached = self._active.get(visitor_id)  # another thread may have been first
                if cached is None:
                    cached = (now, row, confirmed)
                    bounded(self._active, now)
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
                bounded(self._erased)
                self._erased.add(kid)
            for row in current:
                bounded(self._active, now)
                self._active[row[1]] = (now, row, False)

    def _on_keys_confirmed(self, rows: Sequence[KeyRow]) -> None:
        """Called by the recorder after a write that inserted ``rows`` committed."""
        now = time.monotonic()
        with self._lock:
            for row in rows:
                bounded(self._active, now)
                self._active[row[1]] = (now, row, True)
                bounded(self._by_kid, now)
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
                bounded(self._erased)
                self._erased.add(kid)
                self._by_kid.pop(kid, None)
                return None
            aead = AESGCM(key)
            bounded(self._by_kid, now)
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
        for chunk in batched(missing):
            found = self.recorder.keys_by_id(chunk)
            with self._lock:
                for kid in chunk:
                    key = found.get(kid)
                    if key is None:
                        bounded(self._erased)
                        self._erased.add(kid)
                        self._by_kid.pop(kid, None)
                    else:
                        bounded(self._by_kid, now)
                        self._by_kid[kid] = (now, AESGCM(key))

    def forget(self, visitor_ids: Iterable[str], key_ids: Iterable[str]) -> None:
        """Drop cached keys after an erasure in this process."""
        with self._lock:
            for visitor_id in visitor_ids:
                self._active.pop(visitor_id, None)
            for kid in key_ids:
                self._by_kid.pop(kid, None)
                bounded(self._erased)
                self._erased.add(kid)
