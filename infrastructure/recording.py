"""What the SQLite and PostgreSQL ledger recorders share, written once.

The recorders (:mod:`chatledger.infrastructure.sqlite`,
:mod:`chatledger.infrastructure.postgres`) are eventsourcing's application
recorders plus, inside the very transaction that inserts events:

- one row per event in ``chatledger_event_hashes`` (the two hash chains of
  :mod:`chatledger.infrastructure.hashchain`, computed by
  :func:`~chatledger.infrastructure.hashchain.chain_rows_by_hex`); on
  PostgreSQL after eventsourcing's ``LOCK TABLE … IN EXCLUSIVE MODE``, on SQLite
  under its single writer lock, so the log-wide chain has one writer at a time;
- the key tables (``chatledger_keys``: one AES key per visitor;
  ``chatledger_key_subjects``: which visitor a session's personal data belongs
  to): the new keys and owners of the batch are inserted and every key its
  envelopes use is checked (:meth:`LedgerRecorderMixin.check_used_keys`);
- the destruction of the content keys a ``Visitor.DataErased`` event names
  (:func:`erased_visitor_ids`), so the erasure fact and the key destruction
  commit together or not at all.

This module holds the table names, the rows the mapper hands over
(:class:`KeyedStoredEvent`, :class:`KeyRow`), the conflict raised on a stale
key and the hooks through which the key ring learns the outcome; each dialect's
module holds only its SQL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self
from uuid import UUID

from eventsourcing.persistence import RecordConflictError, StoredEvent
from eventsourcing.utils import get_topic

from ..domain.errors import ConfigurationError
from ..domain.table_prefix import DEFAULT_PREFIX, table_name
from ..domain.tenancy import DEFAULT_TENANT, scoped_key
from ..domain.visitor import Visitor
from .hashchain import EventRow, as_uuid
from .key_providers import AlteredKeyRowError, KeyProvider
from .wrapped_keys import is_wrapped, open_wrapped, wrap_keys
from .sealing import SEALS

HASHES = "chatledger_event_hashes"
KEYS = "chatledger_keys"
DESTROYED = "chatledger_destroyed_keys"
"""Ids (never keys) of the keys erasures destroyed: a key id is random and used
once, so a new key under a destroyed id can only be a writer resurrecting a key
it made before the erasure; the write is refused and re-encoded."""
KEY_OWNERS = "chatledger_key_subjects"  # which visitor owns a session's keys (stored name kept)
ERASURE_TOPIC = get_topic(Visitor.DataErased)


def erased_visitor_ids(stored_events: Sequence[StoredEvent]) -> list[str]:
    """The key owners (visitors, within their tenant) whose keys the batch's
    ``Visitor.DataErased`` events destroy."""
    ids: list[str] = []
    for stored in stored_events:
        if stored.topic == ERASURE_TOPIC:
            receipt = json.loads(stored.state)["receipt"]
            tenant = receipt.get("tenant", DEFAULT_TENANT)
            ids.extend(scoped_key(tenant, v) for v in receipt["visitor_ids"])
    return ids


class KeyRow(tuple[str, str, bytes]):
    """``(kid, visitor_id, key)``; never printed with its key. ``stored``: the key
    as ``chatledger_keys`` holds it (wrapped by the master key provider, or the
    key itself without one)."""

    stored: bytes

    def __new__(cls, row: tuple[str, str, bytes], stored: bytes | None = None) -> Self:
        self = super().__new__(cls, row)
        self.stored = row[2] if stored is None else stored
        return self

    def __repr__(self) -> str:
        return f"KeyRow(kid={self[0]!r}, visitor_id={self[1]!r}, key=<redacted>)"


@dataclass(frozen=True)
class KeyedStoredEvent(StoredEvent):
    """A stored event whose personal fields are encrypted (see the shredding mapper).

    ``visitor_id``/``kid``: the visitor and the key its envelopes were made with
    (``kid`` None if no field needed one). ``new_key``: a key the mapper made in
    memory and the store may not hold yet; the recorder inserts it in the event's
    transaction. ``opens_session``: the event opens a session, so the recorder records
    ``session -> visitor`` in that transaction.
    """

    visitor_id: str = ""
    kid: str | None = None
    new_key: KeyRow | None = field(default=None, repr=False, compare=False)
    opens_session: bool = False


class StaleKeyError(RecordConflictError):
    """Envelopes of a batch were made with a key the store does not hold for their
    visitor: an erasure destroyed it, or another writer created the visitor's key
    first. Nothing of the batch was written; the command is re-run (it is a
    conflict) and re-encodes with the visitor's current key."""

    def __init__(self, kids: Sequence[str]) -> None:
        super().__init__(f"stale content keys {sorted(kids)}: re-encode and retry")
        self.kids = list(kids)


StaleKeyHook = Callable[[Sequence[str], Sequence[str], Sequence[KeyRow]], None]
"""``(kids not in the store, visitors whose key was stale, those visitors' current
key rows)``: tells the key ring to drop what it cached, from inside the failing
transaction, before it raises."""
ConfirmedKeysHook = Callable[[Sequence[KeyRow]], None]
"""New key rows that were just committed."""


def key_work(
    stored_events: Sequence[StoredEvent],
) -> tuple[list[KeyRow], list[tuple[UUID, str]], dict[str, str]]:
    """A batch's new key rows, ``(session, visitor)`` key-owner rows and ``kid -> visitor`` to check."""
    new_keys: dict[str, KeyRow] = {}
    owners: list[tuple[UUID, str]] = []
    used: dict[str, str] = {}
    for s in stored_events:
        if not isinstance(s, KeyedStoredEvent):
            continue
        if s.opens_session:
            owners.append((as_uuid(s.originator_id), s.visitor_id))
        if s.kid is not None:
            used[s.kid] = s.visitor_id
        if s.new_key is not None:
            new_keys[s.new_key[0]] = s.new_key
    return list(new_keys.values()), owners, used


WRAPPED_CHECK_S = 60.0
"""How often a process without a key provider looks again whether the store's keys are
wrapped before it stores a new key (once it found them wrapped, it refuses for good)."""


class LedgerTableNames:
    """The ledger's own tables under its table prefix (see ``domain/table_prefix.py``):
    the class attributes are the default prefix's names; :meth:`name_tables` sets
    an instance's for another prefix (before any statement is built)."""

    table_prefix: str = DEFAULT_PREFIX
    HASHES: str = HASHES
    KEYS: str = KEYS
    DESTROYED: str = DESTROYED
    KEY_OWNERS: str = KEY_OWNERS
    SEALS: str = SEALS

    def name_tables(self, prefix: str) -> None:
        self.table_prefix = prefix
        for attr in ("HASHES", "KEYS", "DESTROYED", "KEY_OWNERS", "SEALS"):
            setattr(self, attr, table_name(prefix, getattr(LedgerTableNames, attr)))


class KeyCodec(LedgerTableNames):
    """The content keys as the store holds them: wrapped by the master key
    provider, or (stores of before 0.5, or no provider) as they are."""

    key_provider: KeyProvider | None = None
    """Wraps the content keys (see :mod:`.key_providers`); None: stored as they are."""

    _wrapped_store: bool = False
    _wrapped_checked: float = float("-inf")

    def wrapped_key_count(self) -> tuple[int, int]:  # pragma: no cover - each dialect's
        """``(wrapped, unwrapped)`` rows of ``chatledger_keys``."""
        raise NotImplementedError

    def any_wrapped_key(self) -> bool:  # pragma: no cover - each dialect's
        """Does ``chatledger_keys`` hold a wrapped row?"""
        raise NotImplementedError

    def new_key_row(self, kid: str, visitor_id: str, key: bytes) -> KeyRow:
        """A new key's row, wrapped by the provider (before any transaction). Without a
        provider, a store whose keys are wrapped is refused: a process started without
        the master key would store a visitor's key in the clear next to the data (checked
        again every ``WRAPPED_CHECK_S`` while the store holds no wrapped key)."""
        provider = self.key_provider
        if provider is None:
            now = time.monotonic()
            if not self._wrapped_store and now - self._wrapped_checked > WRAPPED_CHECK_S:
                self._wrapped_store = self.any_wrapped_key()
                self._wrapped_checked = now
            if self._wrapped_store:
                raise ConfigurationError(
                    "This store's content keys are wrapped by a master key, and this process has "
                    "none: it would store a new visitor's key unwrapped. Set CHATLEDGER_MASTER_KEY "
                    "(and CHATLEDGER_KEY_VAULT if the store uses one), or key_provider; nothing "
                    "was written."
                )
        stored = key if provider is None else wrap_keys(provider, {kid: key})[kid]
        return KeyRow((kid, visitor_id, key), stored)

    def open_keys(self, stored: dict[str, bytes]) -> dict[str, bytes]:
        """``kid -> key`` for ``kid -> stored bytes``: legacy 32-byte keys as they are,
        wrapped ones through the provider (a kid it forgot is left out)."""
        keys = {kid: raw for kid, raw in stored.items() if not is_wrapped(raw)}
        wrapped = {kid: raw for kid, raw in stored.items() if kid not in keys}
        if wrapped:
            if self.key_provider is None:
                raise ConfigurationError(
                    "This store's content keys are wrapped by a master key: set "
                    "CHATLEDGER_MASTER_KEY (and CHATLEDGER_KEY_VAULT if it uses one), or key_provider."
                )
            keys.update(open_wrapped(self.key_provider, wrapped))
        return keys

    def audit_open_keys(self, stored: dict[str, bytes]) -> dict[str, bytes | None]:
        """:meth:`open_keys` for ``audit verify``: a row that does not open (altered) maps
        to ``b""``, which opens no envelope (reported as ``altered key``), a forgotten one
        to None, instead of the error stopping the verification."""
        try:
            return dict(self.open_keys(stored))
        except AlteredKeyRowError:
            opened: dict[str, bytes | None] = {}
            for kid, raw in stored.items():
                try:
                    opened[kid] = self.open_keys({kid: raw}).get(kid)
                except AlteredKeyRowError:
                    opened[kid] = b""
            return opened

    def open_key_row(self, kid: str, visitor_id: str, stored: bytes) -> KeyRow | None:
        key = self.open_keys({kid: stored}).get(kid)
        return None if key is None else KeyRow((kid, visitor_id, key), stored)

    def active_key_row(self, kid: str, visitor_id: str, stored: bytes) -> KeyRow:
        """The visitor's key row, to encrypt with; a row whose wrapping the provider
        forgot is refused (a copy of the store older than an erasure)."""
        row = self.open_key_row(kid, visitor_id, stored)
        if row is None:
            raise ConfigurationError(
                f"The content key {kid} of visitor {visitor_id!r} is in this store, but the key "
                "provider forgot its wrapping: this copy of the store is older than an erasure of "
                f"the visitor. Re-run it (chatledger erase --visitor {visitor_id}) before writing."
            )
        return row


class LedgerRecorderMixin(KeyCodec):
    """The key write path's decisions, the hooks through which the key ring
    learns the outcome of its new and cached keys, and when to seal (each
    dialect supplies the SQL)."""

    on_stale_keys: StaleKeyHook | None = None
    on_keys_confirmed: ConfirmedKeysHook | None = None
    seal_every: int = 1000
    """Events this process writes between two in-process seals (0: only
    ``ledger.seal()`` and the worker's job seal)."""
    seal_range: int = 10_000
    """Most events one seal row covers."""
    _unsealed: int = 0
    _sealing = threading.Lock()

    def seal_once(self, limit: int) -> int:  # pragma: no cover - each dialect's
        raise NotImplementedError

    def seal(self, max_ranges: int | None = None) -> int:
        """Seal what is committed after the last seal (see :mod:`.sealing`); the
        number of events sealed. ``max_ranges`` bounds the work under a load
        that outpaces it (None: until caught up)."""
        total = 0
        ranges = 0
        while max_ranges is None or ranges < max_ranges:
            n = self.seal_once(self.seal_range)
            total += n
            ranges += 1
            if n < self.seal_range:
                break
        return total

    def seal_if_due(self, written: int) -> None:
        """After a commit: seal in-process every ``seal_every`` events, in the
        thread that crossed the mark, unless another thread is sealing. The
        caller's events are committed already, so a failed seal is only logged
        (the next one, or the worker's, takes the range)."""
        if not self.seal_every:
            return
        self._unsealed += written
        if self._unsealed < self.seal_every or not self._sealing.acquire(blocking=False):
            return
        try:
            self._unsealed = 0
            self.seal(max_ranges=4)
        except Exception:
            logging.getLogger(__name__).warning("in-process seal failed", exc_info=True)
        finally:
            self._sealing.release()

    def check_used_keys(
        self,
        used: dict[str, str],
        found: dict[str, str],
        destroyed: set[str],
        current_keys: Callable[[list[str]], Iterable[KeyRow]],
    ) -> None:
        """Raise :class:`StaleKeyError` unless every key of ``used`` (``kid ->
        visitor``) is in the store (``found``: ``kid -> visitor`` of those that
        are), is its visitor's and was not destroyed (``destroyed``: those of the
        batch's new keys an erasure destroyed). Before raising, tell the key ring,
        with the stale visitors' current keys (``current_keys(visitors)``)."""
        for kid in destroyed:
            found.pop(kid, None)
        if all(found.get(kid) == visitor for kid, visitor in used.items()):
            return
        visitors = sorted({v for k, v in used.items() if found.get(k) != v})
        current = [row for row in current_keys(visitors) if row[0] not in destroyed]
        bad = [kid for kid, visitor in used.items() if found.get(kid) != visitor]
        if self.on_stale_keys is not None:
            self.on_stale_keys([k for k in bad if k not in found], sorted({used[k] for k in bad}), current)
        raise StaleKeyError(bad)

    def confirm_keys(self, stored_events: Sequence[StoredEvent]) -> None:
        """After a write committed: tell the key ring which new keys are now stored."""
        if self.on_keys_confirmed is not None:
            rows = [s.new_key for s in stored_events if isinstance(s, KeyedStoredEvent) and s.new_key is not None]
            if rows:
                self.on_keys_confirmed(rows)


class KeyTables(Protocol):
    """What the key audit reads from the key tables, inside the verification's
    snapshot (each dialect implements it)."""

    def keys(self, kids: Sequence[str]) -> dict[str, tuple[str, bytes | None]]:  # pragma: no cover
        """``kid -> (visitor_id, key)`` of those of ``kids`` in ``chatledger_keys``
        (key None: the key provider forgot its wrapping)."""
        raise NotImplementedError

    def destroyed(self, kids: Sequence[str]) -> set[str]:  # pragma: no cover
        """Those of ``kids`` in ``chatledger_destroyed_keys``."""
        raise NotImplementedError

    def key_owners(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, str]:  # pragma: no cover
        """``session -> visitor`` from ``chatledger_key_subjects``."""
        raise NotImplementedError

    def erasure_states(self) -> Iterable[tuple[int, bytes]]:  # pragma: no cover
        """``(log position, stored bytes)`` of every ``Visitor.DataErased`` event of the log."""
        raise NotImplementedError


class KeyAuditor(Protocol):
    """Checks the key table during ``verify`` (see :class:`~chatledger.infrastructure.key_audit.KeyAudit`)."""

    def watch(self, events: Iterable[EventRow], tables: KeyTables) -> Iterator[EventRow]: ...

    def finish(self, tables: KeyTables) -> None: ...

