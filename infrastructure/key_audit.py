"""The key audit: the key table, which cannot be hash-chained, checked against
the chained log while ``verify`` reads it."""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.utils import resolve_topic

from ..domain.pydantic_aggregates import upcast
from .envelopes import envelopes
from .hashchain import ChainBreak
from .recording import ERASURE_TOPIC, KeyTables

_ENVELOPE_KID = re.compile(rb'\{"\$enc":"[A-Za-z0-9+/=]*","kid":"([^"\\]{1,100})"\}')
KEY_CHECK_BATCH = 500
"""Keys :class:`KeyAudit` looks up per query while ``verify`` reads the log."""


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
            if entry[1] is None:
                self._add(
                    "forgotten key", row.notification_id, row.originator_id, row.originator_version,
                    f"content key {kid} of visitor {entry[0]!r} is in chatledger_keys, but the master key "
                    "provider no longer holds its wrapping (an erasure after this copy of the store "
                    "was taken, or another key vault): the content reads as erased",
                )
            elif not key_opens(row, kid, entry[1]):
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
            owners = tables.key_owners(sorted({self._missing[k][1] for k in unexplained}))
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


def key_opens(row: Any, kid: str, key: bytes) -> bool:
    """Does ``key`` open the first envelope of ``row`` made under ``kid``?

    Every envelope counts, wherever it is in the event (not only at today's
    personal paths): an event stored at an older version may have had its
    personal fields elsewhere."""
    try:
        data = json.loads(row.state)
    except ValueError:
        return True  # not JSON: the chain reports the altered event
    aad_id = str(row.originator_id)
    for node, leaf, concrete in envelopes(data, []):
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
