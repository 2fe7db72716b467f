"""Stored content-key rows: which provider wrapped a row (its prefix), and opening it with that one.

See :mod:`.key_providers`: ``clm1:`` rows are the master key's, ``clv1:`` rows
the vault's, ``clw1:`` rows are of 0.5 (when both built-in providers wrote that
prefix) or of a provider of your own without a ``prefix``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..domain.errors import ConfigurationError
from .key_providers import (
    LEGACY_PREFIX,
    MASTER_PREFIX,
    PREFIXES,
    VAULT_PREFIX,
    KeyProvider,
    MasterKeyProvider,
    MasterKeys,
)

_VAULT_BLOB = 12 + 32 + 16
"""A vault-wrapped key: nonce, key, tag (a master-key blob adds ``ID:`` in front)."""


def is_wrapped(stored: bytes) -> bool:
    """Is ``stored`` a wrapped content key (else 32 raw bytes, as before 0.5)?"""
    return len(stored) > 32 and stored[:5] in PREFIXES


def prefix_of(provider: KeyProvider) -> bytes:
    """The prefix of the rows ``provider`` wraps: its ``prefix`` attribute, else ``clw1:``."""
    prefix = getattr(provider, "prefix", LEGACY_PREFIX)
    return prefix if isinstance(prefix, bytes) else LEGACY_PREFIX


def wrap_keys(provider: KeyProvider, keys: Mapping[str, bytes]) -> dict[str, bytes]:
    """``kid -> stored bytes`` (the provider's prefix and its wrapping) of ``keys``."""
    prefix = prefix_of(provider)
    return {kid: prefix + blob for kid, blob in provider.wrap(keys).items()}


def is_current(provider: KeyProvider, stored: bytes) -> bool:
    """Is the stored row wrapped by ``provider``, under its current master key? (Else
    ``content-keys rotate`` re-wraps it: also the rows another provider wrapped.)"""
    prefix = prefix_of(provider)
    return stored.startswith(prefix) and provider.is_current(stored[len(prefix) :])


def open_wrapped(provider: KeyProvider, stored: Mapping[str, bytes]) -> dict[str, bytes]:
    """``kid -> content key`` for wrapped rows ``kid -> stored bytes``, each opened by the
    provider that wrapped it: ``provider``'s own rows by it, the master key's rows by the
    vault's master key (a store that had no vault before). A ``clw1:`` row of 0.5 was
    written by the vault if it is a vault blob long, else by the master key. A kid
    whose wrapping the provider forgot is left out."""
    own = prefix_of(provider)
    groups: dict[bytes, dict[str, bytes]] = {}
    for kid, raw in stored.items():
        prefix = raw[:5]
        if prefix == LEGACY_PREFIX and own != LEGACY_PREFIX:
            prefix = VAULT_PREFIX if len(raw) - 5 == _VAULT_BLOB else MASTER_PREFIX
        groups.setdefault(prefix, {})[kid] = raw[5:]
    found: dict[str, bytes] = {}
    for prefix, rows in groups.items():
        found.update(_opener(provider, prefix).unwrap(rows))
    return found


def _opener(provider: KeyProvider, prefix: bytes) -> KeyProvider:
    if prefix == prefix_of(provider):
        return provider
    master = getattr(provider, "master", None)
    if prefix == MASTER_PREFIX and isinstance(master, MasterKeys):
        return MasterKeyProvider(master)
    if prefix == VAULT_PREFIX:
        raise ConfigurationError(
            "This store's content keys are wrapped by a key vault: set CHATLEDGER_KEY_VAULT "
            "(key_vault) to it, with CHATLEDGER_MASTER_KEY."
        )
    raise ConfigurationError(
        f"This store holds content keys wrapped by another key provider ({prefix!r}) than "
        f"{type(provider).__name__}: configure that one (CHATLEDGER_MASTER_KEY, "
        "CHATLEDGER_KEY_VAULT or key_provider)."
    )


__all__ = ["is_current", "is_wrapped", "open_wrapped", "prefix_of", "wrap_keys"]
