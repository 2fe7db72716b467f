"""Envelopes: a personal field stored as ``{"$enc": base64(nonce|ciphertext), "kid": key id}``
(AES-256-GCM), with the field's place in the event as associated data."""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Iterable
from typing import Any, TypeGuard
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import StoredEvent
from pydantic_core import from_json

from ..domain.errors import ChatLedgerError
from .personal_fields import PLAIN_FIELD

_HEX32 = re.compile(r"[0-9a-f]{32}")
KID_PATTERN = re.compile(rb'"kid":"([^"\\]{1,100})"')
"""The key id of an envelope in stored JSON."""


class ContentIntegrityError(ChatLedgerError, RuntimeError):
    """An encrypted field failed authentication: the stored bytes were altered.
    A chatledger error (the command line prints it on one line, exit status 1)."""


class ErasedSnapshotError(ContentIntegrityError):
    """A snapshot is under a key an erasure destroyed: stale derived data the
    erasure deletes right after its transaction (left by a crash in between, or
    read in that moment by another process). The ledger drops it and replays."""


def is_envelope(value: object) -> TypeGuard[dict[str, str]]:
    """Whether ``value`` is a sealed field: ``{"$enc": ..., "kid": ...}``."""
    return type(value) is dict and len(value) == 2 and "$enc" in value and "kid" in value


def walk(node: Any, parts: list[str], trail: list[str]) -> Iterable[tuple[Any, str | int, list[str]]]:
    """Yield ``(container, key, concrete path)`` of every leaf matching ``parts``."""
    head, rest = parts[0], parts[1:]
    if head == "*":
        keys: Iterable[str | int] = (
            list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()
        )
    else:
        keys = [head] if isinstance(node, dict) and head in node else []
    for key in keys:
        path = [*trail, str(key)]
        if rest:
            yield from walk(node[key], rest, path)
        else:
            yield node, key, path


def envelopes(node: Any, trail: list[str]) -> Iterable[tuple[Any, str | int, list[str]]]:
    """Yield ``(container, key, concrete path)`` of every envelope anywhere in
    ``node``, whatever the event's personal paths are today: how an event
    stored at an older version is opened (its personal fields may have had
    other names then; an envelope's associated data names the path it was
    stored at)."""
    items: Iterable[tuple[str | int, Any]]
    if type(node) is dict:
        items = node.items()
    elif type(node) is list:
        items = enumerate(node)
    else:
        return
    for key, value in list(items):
        if is_envelope(value):
            yield node, key, [*trail, str(key)]
        elif type(value) in (dict, list):
            yield from envelopes(value, [*trail, str(key)])



def associated_data(stored_event: StoredEvent, concrete: list[str], aad_id: str | None = None) -> bytes:
    """An envelope's associated data: ``json.dumps([aggregate id, version, *path])``."""
    aad_id = aad_id or aad_id_of(stored_event)
    version = stored_event.originator_version
    if len(concrete) == 1 and PLAIN_FIELD.fullmatch(concrete[0]):
        # Exactly what json.dumps gives: nothing here needs escaping.
        return f'["{aad_id}", "{version}", "{concrete[0]}"]'.encode()
    return json.dumps([aad_id, str(version), *concrete]).encode()


def loads_plain(plain: bytes) -> Any:
    """``json.loads`` of a decrypted value, via pydantic's faster parser (which
    refuses lone surrogates; ``json.dumps`` escapes them, so fall back)."""
    if plain[:1] == b'"' and b"\\" not in plain:
        return plain[1:-1].decode()  # a string with nothing escaped (most texts)
    try:
        return from_json(plain)
    except ValueError:
        return json.loads(plain)


def aad_id_of(stored_event: StoredEvent) -> str:
    """The canonical text of the event's aggregate id (part of every envelope's
    associated data). The projector's SQLite records carry the stored hex
    (``raw_originator_id``), which saves two UUID conversions per event."""
    raw = getattr(stored_event, "raw_originator_id", None)
    if type(raw) is str and _HEX32.fullmatch(raw):
        return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    originator_id = stored_event.originator_id
    if type(originator_id) is UUID:  # PostgreSQL records
        return str(originator_id)
    return str(UUID(str(originator_id)))


def open_envelope(stored_event: StoredEvent, aead: AESGCM, envelope: dict[str, str], aad: bytes) -> bytes:
    """The plaintext JSON of ``envelope`` (:class:`ContentIntegrityError` if it does not authenticate)."""
    try:
        sealed = binascii.a2b_base64(envelope["$enc"])
        return aead.decrypt(sealed[:12], sealed[12:], aad)
    except (InvalidTag, binascii.Error) as err:
        msg = (
            f"An encrypted field of {stored_event.originator_id} version "
            f"{stored_event.originator_version} failed authentication; the stored "
            "event was altered. Run `chatledger audit verify`."
        )
        raise ContentIntegrityError(msg) from err
