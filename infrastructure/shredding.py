"""Crypto-shredding, at its old import path: a thin re-export for now.

The parts live in modules of their own: the personal fields
(:mod:`.personal_fields`), envelope crypto (:mod:`.envelopes`), the key ring
(:mod:`.key_ring`), the mapper (:mod:`.shredding_mapper`), its fast and sealed
decoders (:mod:`.sealed_decoding`) and the key audit (:mod:`.key_audit`).
Tunables (``MAX_CACHED_KEYS``, ``KEY_CHECK_BATCH``) are read from their own
module: set them there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..domain.erasure import ERASED_VALUES
from .envelopes import ContentIntegrityError, ErasedSnapshotError
from .envelopes import is_envelope as _is_envelope
from .envelopes import walk as _walk
from .key_audit import KEY_CHECK_BATCH, KeyAudit
from .key_ring import KEY_CACHE_TTL_S, MAX_CACHED_KEYS, KeyRing
from .personal_fields import COMPILED_PATHS as _COMPILED
from .personal_fields import EMPTY_VALUES as _EMPTY
from .personal_fields import PERSONAL_FIELDS, SEALED_TEXT, SEALED_VALUES
from .recording import KeyTables
from .shredding_mapper import KID_PATTERN as _KID
from .shredding_mapper import ShreddingMapper

if TYPE_CHECKING:
    from .postgres import PostgresLedgerRecorder
    from .sqlite import SQLiteLedgerRecorder


def _keys_by_id(recorder: SQLiteLedgerRecorder | PostgresLedgerRecorder, kids: list[str]) -> dict[str, bytes]:
    """``kid -> key`` of those of ``kids`` that exist (use ``recorder.keys_by_id``)."""
    return recorder.keys_by_id(kids)


__all__ = [
    "ERASED_VALUES",
    "KEY_CACHE_TTL_S",
    "KEY_CHECK_BATCH",
    "MAX_CACHED_KEYS",
    "PERSONAL_FIELDS",
    "SEALED_TEXT",
    "SEALED_VALUES",
    "_COMPILED",
    "_EMPTY",
    "_KID",
    "ContentIntegrityError",
    "ErasedSnapshotError",
    "KeyAudit",
    "KeyRing",
    "KeyTables",
    "ShreddingMapper",
    "_is_envelope",
    "_keys_by_id",
    "_walk",
]
