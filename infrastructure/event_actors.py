"""The actor of an event, stored in the event's own state (see :mod:`chatledger.domain.actors`).

The mapper writes the actor (and the request id, if any) as the first keys of
the stored JSON object::

    {"$actor":"api-key:k1","$request":"req-42","originator_id":...}

and takes them off again before the event class validates the rest, so no
event class has an actor field, no class version changed and no upcaster is
needed: an event stored before has no ``"$actor"`` key and reads as
``"unrecorded"``. Because the actor is part of the stored bytes, it is covered
by the event's hash (``event_hash``, over ``state``), so by every seal and
anchor after it: changing an actor is an ``altered event`` (or, re-hashed by
hand, a broken seal) to ``audit verify``, with nothing added to the write
transaction. An auditor reads it with SQL too
(``json_extract(state, '$."$actor"')``). Snapshots carry none (they are not
the record).

Both tokens are restricted to ``[A-Za-z0-9._:@/+=-]`` (no quote, no
backslash), so they go into the JSON as they are and are read back by
slicing, without parsing the event.
"""

from __future__ import annotations

import json
from typing import Any

from eventsourcing.persistence import StoredEvent

from ..domain.actors import UNRECORDED, Cause

PREFIX = b'{"$actor":"'
_REQUEST = b',"$request":"'


def stamp(body: bytes, cause: Cause) -> bytes:
    """``body`` (a JSON object) with ``cause`` as its first keys."""
    head = PREFIX + cause.actor.encode() + b'"'
    if cause.request_id:
        head += _REQUEST + cause.request_id.encode() + b'"'
    if body == b"{}":
        return head + b"}"
    return head + b"," + body[1:]


def split(state: bytes) -> tuple[Cause, bytes]:
    """``(cause, the JSON without it)`` of a stored state (decompressed and
    decrypted); a state without an actor: ``(unrecorded, state)``.

    A state written otherwise than the mapper writes it (re-serialized by some
    tool, with spaces or another key order: an altered event, which ``verify``
    reports) is parsed for its top-level ``$actor``; its bytes are returned as
    they are, and the decoders' dict paths drop the keys (:func:`drop_cause`)."""
    if not state.startswith(PREFIX):
        if b'"$actor"' in state:
            return _parsed_cause(state), state
        return Cause(UNRECORDED), state
    start = len(PREFIX)
    end = state.index(b'"', start)
    actor = state[start:end].decode()
    rest = end + 1
    request_id = None
    if state.startswith(_REQUEST, rest):
        start = rest + len(_REQUEST)
        end = state.index(b'"', start)
        request_id = state[start:end].decode()
        rest = end + 1
    body = b"{" + state[rest + 1 :] if state[rest : rest + 1] == b"," else b"{}"
    return Cause(actor, request_id), body


def _parsed_cause(state: bytes) -> Cause:
    try:
        data = json.loads(state)
    except ValueError:
        return Cause(UNRECORDED)
    actor = data.get("$actor") if isinstance(data, dict) else None
    if not isinstance(actor, str):
        return Cause(UNRECORDED)
    request_id = data.get("$request")
    return Cause(actor, request_id if isinstance(request_id, str) else None)


def drop_cause(data: dict[str, Any]) -> dict[str, Any]:
    """A decoded stored state without its actor keys (in place)."""
    data.pop("$actor", None)
    data.pop("$request", None)
    return data


def without_cause(stored_event: StoredEvent) -> StoredEvent:
    """``stored_event`` with its actor taken off the state (itself if it has none)."""
    state = stored_event.state
    if not state.startswith(PREFIX):
        return stored_event
    return StoredEvent(
        originator_id=stored_event.originator_id,
        originator_version=stored_event.originator_version,
        topic=stored_event.topic,
        state=split(state)[1],
    )


__all__ = ["PREFIX", "drop_cause", "split", "stamp", "without_cause"]
