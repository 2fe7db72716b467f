"""Master-key rotation: re-wrap the content keys, never the events.

:func:`rotate_keys` (``rotate_keys(ledger)``, ``chatledger content-keys rotate``)
asks the key provider to re-wrap what it holds under its current master key
(the vault's rows), wraps every content key stored before wrapping existed
(0.4 and older stores) or under another master key, and has the provider forget
every key an erasure destroyed (a catch-up after a process that died between
an erasure's commit and its ``forget``). The events, their hashes and seals are
not touched: every event stays readable and ``audit verify`` stays green.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain.batching import batched
from ..domain.errors import ConfigurationError
from ..infrastructure.key_providers import new_master_key
from ..infrastructure.wrapped_keys import is_current, wrap_keys
from ..infrastructure.ledger_recorders import as_ledger_recorder
from .unit_of_work import UnitOfWork


@dataclass(frozen=True)
class KeyRotation:
    """What :func:`rotate_keys` did."""

    provider: str
    provider_rewrapped: int
    """Rows the provider re-wrapped itself (a key vault's wrapping keys)."""
    keys_wrapped: int
    """Content-key rows of ``chatledger_keys`` wrapped anew (legacy or another master key)."""
    keys_forgotten: int
    """Destroyed keys the provider was told to forget."""


def rotate_keys(uow: UnitOfWork) -> KeyRotation:
    uow.scope(True, "rotate_keys")  # every tenant's keys: the operator's ledger only
    recorder = as_ledger_recorder(uow.recorder)
    provider = recorder.key_provider if recorder is not None else None
    if recorder is None or provider is None:
        raise ConfigurationError(
            "No master key provider is configured: set CHATLEDGER_MASTER_KEY (and "
            "CHATLEDGER_KEY_VAULT) or key_provider, then rotate."
        )
    provider_rewrapped = provider.rotate()
    wrapped = 0
    for chunk in batched(recorder.stored_keys()):
        stale = {kid: stored for kid, stored in chunk if not is_current(provider, stored)}
        if not stale:
            continue
        keys = recorder.open_keys(stale)
        fresh = wrap_keys(provider, keys)
        wrapped += recorder.replace_stored_keys([(kid, stale[kid], fresh[kid]) for kid in keys])
    destroyed = recorder.destroyed_key_ids()
    if destroyed:
        provider.forget(destroyed)
    if wrapped:
        # The rows it replaced held the keys unwrapped (an old store) or under the old
        # master key: zeroed on SQLite (secure_delete), then out of the WAL; vacuumed on PostgreSQL.
        recorder.purge_free_space()
    return KeyRotation(type(provider).__name__, provider_rewrapped, wrapped, len(destroyed))


@dataclass(frozen=True)
class KeyStatus:
    """What :func:`key_status` found in ``chatledger_keys``."""

    wrapped: int
    unwrapped: int

    @property
    def ok(self) -> bool:
        """False when a store with wrapped keys also holds unwrapped ones: keys in the clear
        next to the data (a process without the master key, or an old store not rotated yet:
        run ``content-keys rotate`` with the master key)."""
        return not (self.wrapped and self.unwrapped)


def key_status(uow: UnitOfWork) -> KeyStatus:
    recorder = as_ledger_recorder(uow.recorder)
    if recorder is None:
        raise ConfigurationError("This ledger's recorder keeps no content keys.")
    wrapped, unwrapped = recorder.wrapped_key_count()
    return KeyStatus(wrapped, unwrapped)


__all__ = ["KeyRotation", "KeyStatus", "key_status", "new_master_key", "rotate_keys"]
