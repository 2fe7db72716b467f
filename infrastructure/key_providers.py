"""Master key providers: the content keys in the database, wrapped by a key kept elsewhere.

Each visitor's AES-256 content key (``chatledger_keys``) is stored **wrapped**
(envelope encryption): ``provider.prefix + provider.wrap(...)``, each provider
with its own prefix (``clm1:`` the master key, ``clv1:`` the vault; ``clw1:``
rows of 0.5, see :func:`~.wrapped_keys.open_wrapped`), so a row is always opened by the provider
that wrapped it. A row of exactly 32 bytes is a key stored before wrapping
existed (0.4 and older); it is used as it is until ``chatledger content-keys
rotate`` wraps it.

A provider is anything with the :class:`KeyProvider` methods. Two are built in:

- :class:`MasterKeyProvider`: one or more 256-bit master keys from an
  environment secret (``CHATLEDGER_MASTER_KEY``) or a file; stateless. A stolen
  database (or backup) alone reveals no content. It cannot *forget* one key:
  a backup taken before an erasure, together with the master key, still opens
  the erased content.
- :class:`VaultKeyProvider`: the master key plus a **key vault**, a small
  SQLite file outside the database holding one random wrapping key per content
  key (itself wrapped by the master key). Erasure deletes the wrapping key from
  the vault (:meth:`~VaultKeyProvider.forget`), so a database backup taken
  before the erasure cannot open the erased content any more, while the other
  visitors' content in that backup stays readable.

A KMS or Vault adapter (AWS KMS ``Encrypt``/``Decrypt``, Vault transit) is a class
with the same five methods, named by ``CHATLEDGER_KEY_PROVIDER=module:factory``
(a callable taking the :class:`~chatledger.infrastructure.settings.Settings`).
Keys never appear in a ``repr`` or a log line.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..domain.batching import batched
from ..domain.errors import ConfigurationError

MASTER_PREFIX = b"clm1:"
"""Marks a stored content key wrapped by :class:`MasterKeyProvider`."""
VAULT_PREFIX = b"clv1:"
"""Marks a stored content key wrapped by :class:`VaultKeyProvider`."""
LEGACY_PREFIX = b"clw1:"
"""Rows of 0.5 before each provider had its own prefix (both built-in ones wrote it;
see :func:`open_wrapped`), and a provider of your own without a ``prefix``."""
PREFIXES = (MASTER_PREFIX, VAULT_PREFIX, LEGACY_PREFIX)
_AAD = b"chatledger/content-key/v1|"


class AlteredKeyRowError(ConfigurationError):
    """A wrapped content-key row does not open under its wrapping: it was altered."""


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps content keys with a master key kept outside the database."""

    def wrap(self, keys: Mapping[str, bytes]) -> dict[str, bytes]:
        """``kid -> wrapped bytes`` for ``kid -> content key`` (one call per batch of new keys)."""
        ...

    def unwrap(self, wrapped: Mapping[str, bytes]) -> dict[str, bytes]:
        """``kid -> content key``; a kid whose wrapping was forgotten is left out."""
        ...

    def forget(self, kids: Sequence[str]) -> None:
        """After an erasure: make ``kids`` unrecoverable from any copy of the database."""
        ...

    def is_current(self, wrapped: bytes) -> bool:
        """Is ``wrapped`` under the current master key (else ``keys rotate`` re-wraps it)?"""
        ...

    def rotate(self) -> int:
        """Re-wrap what the provider holds itself under the current master key; how many."""
        ...


class MasterKeys:
    """Master keys by id, the first the current one; from ``id:base64,id:base64``."""

    def __init__(self, spec: str) -> None:
        self._keys: dict[str, AESGCM] = {}
        self.current = ""
        for part in (p.strip() for p in spec.split(",")):
            mid, sep, encoded = part.partition(":")
            try:
                key = base64.b64decode(encoded, validate=True) if sep else b""
            except binascii.Error:
                key = b""
            if not mid or len(key) != 32 or not mid.isalnum():
                raise ConfigurationError(
                    "master_key (CHATLEDGER_MASTER_KEY) must be 'ID:BASE64' entries separated by "
                    "commas, each a 256-bit key (make one with `chatledger keys new-master ID`), "
                    "the current one first."
                )
            self._keys[mid] = AESGCM(key)
            self.current = self.current or mid

    def __repr__(self) -> str:
        return f"MasterKeys(current={self.current!r}, ids={list(self._keys)!r})"

    def seal(self, kid: str, secret: bytes) -> bytes:
        nonce = os.urandom(12)
        sealed = self._keys[self.current].encrypt(nonce, secret, _AAD + kid.encode())
        return self.current.encode() + b":" + nonce + sealed

    def open(self, kid: str, blob: bytes) -> bytes:
        mid, _, rest = blob.partition(b":")
        key = self._keys.get(mid.decode("ascii", "replace"))
        if key is None:
            raise ConfigurationError(
                f"Content key {kid} is wrapped by master key {mid.decode('ascii', 'replace')!r}, "
                "which CHATLEDGER_MASTER_KEY does not list; add it back (after the current one) "
                "and run `chatledger keys rotate`."
            )
        try:
            return key.decrypt(rest[:12], rest[12:], _AAD + kid.encode())
        except InvalidTag as err:
            msg = f"Content key {kid} does not open under master key {mid.decode()!r}: the row was altered."
            raise AlteredKeyRowError(msg) from err

    def is_current(self, blob: bytes) -> bool:
        return blob.partition(b":")[0] == self.current.encode()


def new_master_key(mid: str) -> str:
    """A fresh ``ID:BASE64`` master key entry."""
    if not mid.isalnum():
        raise ConfigurationError(f"A master key id is letters and digits, not {mid!r}.")
    return f"{mid}:{base64.b64encode(os.urandom(32)).decode()}"


class MasterKeyProvider:
    """Content keys wrapped by a master key (AES-256-GCM, the kid as associated data)."""

    prefix = MASTER_PREFIX

    def __init__(self, master: MasterKeys) -> None:
        self.master = master

    def __repr__(self) -> str:
        return f"MasterKeyProvider({self.master!r})"

    def wrap(self, keys: Mapping[str, bytes]) -> dict[str, bytes]:
        return {kid: self.master.seal(kid, key) for kid, key in keys.items()}

    def unwrap(self, wrapped: Mapping[str, bytes]) -> dict[str, bytes]:
        return {kid: self.master.open(kid, blob) for kid, blob in wrapped.items()}

    def forget(self, kids: Sequence[str]) -> None:
        """Nothing to forget: the database row was the only copy of the wrapped key."""

    def is_current(self, wrapped: bytes) -> bool:
        return self.master.is_current(wrapped)

    def rotate(self) -> int:
        return 0


class VaultKeyProvider:
    """Content keys wrapped by per-key wrapping keys kept in a vault file (see the module doc)."""

    prefix = VAULT_PREFIX

    def __init__(
        self, master: MasterKeys, path: str | os.PathLike[str], *, create: bool = False
    ) -> None:
        self.master = master
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        if not create and not os.path.exists(self.path):
            raise ConfigurationError(
                f"The key vault {self.path} does not exist: check key_vault (CHATLEDGER_KEY_VAULT). "
                "To make a new one, set key_vault_create (CHATLEDGER_KEY_VAULT_CREATE=1) or run "
                "`chatledger content-keys rotate --create-vault` once."
            )
        try:
            if create and not os.path.exists(self.path):
                # Owner-only from the start: SQLite gives the -wal and -shm files the mode
                # of the database file.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS wrapping_keys (kid TEXT PRIMARY KEY, wrapped BLOB NOT NULL)"
            )
        except sqlite3.Error as err:
            raise ConfigurationError(
                f"Cannot open the key vault {self.path} ({err}); check key_vault."
            ) from err
        for name in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
            if os.path.exists(name):
                os.chmod(name, 0o600)

    def __repr__(self) -> str:
        return f"VaultKeyProvider({self.path!r}, {self.master!r})"

    def close(self) -> None:
        self._conn.close()

    def wrap(self, keys: Mapping[str, bytes]) -> dict[str, bytes]:
        """Wrap each key under its kid's wrapping key: a new one, or the one the vault
        already holds. A kid's wrapping key is never replaced, so two processes that
        wrap the same key at once (two rotations) make rows that both open, whichever
        of them the database keeps (its update is a compare-and-set)."""
        rows = [(kid, self.master.seal(kid, AESGCM.generate_key(256))) for kid in keys]
        held: dict[str, bytes] = {}
        with self._lock:  # stored before the database row can refer to it
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR IGNORE INTO wrapping_keys VALUES (?,?)", rows)
                for chunk in batched(list(keys)):
                    marks = ",".join("?" * len(chunk))
                    held.update(
                        (kid, bytes(blob))
                        for kid, blob in self._conn.execute(
                            f"SELECT kid, wrapped FROM wrapping_keys WHERE kid IN ({marks})", chunk
                        ).fetchall()
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        out: dict[str, bytes] = {}
        for kid, key in keys.items():
            wrapping = self.master.open(kid, held[kid])
            nonce = os.urandom(12)
            out[kid] = nonce + AESGCM(wrapping).encrypt(nonce, key, _AAD + kid.encode())
        return out

    def unwrap(self, wrapped: Mapping[str, bytes]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for chunk in batched(list(wrapped)):
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT kid, wrapped FROM wrapping_keys WHERE kid IN ({marks})", chunk
                ).fetchall()
            for kid, blob in rows:
                wrapping = self.master.open(kid, bytes(blob))
                sealed = wrapped[kid]
                try:
                    found[kid] = AESGCM(wrapping).decrypt(
                        sealed[:12], sealed[12:], _AAD + kid.encode()
                    )
                except InvalidTag as err:
                    msg = f"Content key {kid} does not open under its wrapping key: the row was altered."
                    raise AlteredKeyRowError(msg) from err
        return found

    def forget(self, kids: Sequence[str]) -> None:
        with self._lock:
            for chunk in batched(list(kids)):
                marks = ",".join("?" * len(chunk))
                self._conn.execute(f"DELETE FROM wrapping_keys WHERE kid IN ({marks})", chunk)
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def is_current(self, wrapped: bytes) -> bool:
        return True  # the database row does not depend on the master key; the vault does

    def rotate(self) -> int:
        """Re-wrap every vault row not under the current master key (the database is not touched)."""
        done = 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = self._conn.execute("SELECT kid, wrapped FROM wrapping_keys").fetchall()
                for kid, blob in rows:
                    if not self.master.is_current(bytes(blob)):
                        fresh = self.master.seal(kid, self.master.open(kid, bytes(blob)))
                        self._conn.execute(
                            "UPDATE wrapping_keys SET wrapped=? WHERE kid=?", (fresh, kid)
                        )
                        done += 1
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return done


def provider_from_settings(settings: object) -> KeyProvider | None:
    """The provider the settings name: ``key_provider`` (``module:factory``), else the
    vault (``master_key`` + ``key_vault``), else the master key alone, else None
    (keys stored unwrapped, as before 0.5)."""
    spec = getattr(settings, "key_provider", None)
    if spec:
        module, _, name = str(spec).partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigurationError(
                f"key_provider {spec!r} names no importable 'module:factory' ({err})."
            ) from err
        provider = factory(settings)
        if not isinstance(provider, KeyProvider):
            raise ConfigurationError(
                f"key_provider {spec!r} returned {type(provider).__name__}, not a KeyProvider."
            )
        return provider
    secret = getattr(settings, "master_key", None)
    vault = getattr(settings, "key_vault", None)
    key_file = getattr(settings, "master_key_file", None)
    if secret is None and key_file:
        try:
            secret = open(key_file, encoding="ascii").read().strip()  # noqa: SIM115
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigurationError(f"Cannot read master_key_file {key_file!r} ({err}).") from err
    if secret is None:
        if vault:
            raise ConfigurationError(
                "key_vault (CHATLEDGER_KEY_VAULT) needs master_key (CHATLEDGER_MASTER_KEY)."
            )
        return None
    master = MasterKeys(
        secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)
    )
    if not vault:
        return MasterKeyProvider(master)
    return VaultKeyProvider(master, vault, create=bool(getattr(settings, "key_vault_create", False)))


__all__ = [
    "AlteredKeyRowError",
    "LEGACY_PREFIX",
    "MASTER_PREFIX",
    "PREFIXES",
    "VAULT_PREFIX",
    "KeyProvider",
    "MasterKeyProvider",
    "MasterKeys",
    "VaultKeyProvider",
    "new_master_key",
    "provider_from_settings",
]
