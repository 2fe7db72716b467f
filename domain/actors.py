"""Who caused an event: the *actor* (and, optionally, the caller's request id).

Every event appended records the actor in effect when its command ran, read
from a context variable:

    with ledger.acting_as("operator:alice", request_id="ticket-4711"):
        ledger.erase(visitor_id="v-1")

Actors are short tokens such as ``api-key:<key id>``, ``service:<name>``,
``operator:<name>``, ``worker:sweeper`` or ``system`` (letters, digits and
``._:@/+=-``, at most 128 characters: never free text, never personal data).
Nothing set: :data:`UNKNOWN` (or the ledger's ``actor`` setting). An event
stored before actors were recorded reads as :data:`UNRECORDED`.

The context variable is per thread and per asyncio task, so each request or
job of a process keeps its own; a thread started by the caller starts without
one (``contextvars.copy_context`` carries it over).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

from .errors import InvalidValueError

UNKNOWN = "unknown"
"""The actor of an event appended with no actor set."""
UNRECORDED = "unrecorded"
"""The actor of an event stored before actors were recorded."""
SWEEPER = "worker:sweeper"
TOKEN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class Cause(NamedTuple):
    """Who appended an event (``actor``) and in answer to which request (``request_id``)."""

    actor: str
    request_id: str | None = None


_CURRENT: ContextVar[Cause | None] = ContextVar("chatledger_actor", default=None)


def checked_token(value: object, name: str) -> str:
    if not isinstance(value, str) or not TOKEN.fullmatch(value):
        raise InvalidValueError(
            name, "token", f"{name} must be 1-128 characters of letters, digits and ._:@/+=- "
            f"(e.g. operator:alice), not {value!r}."
        )
    return value


def current_cause() -> Cause | None:
    """The actor set in this context, if any."""
    return _CURRENT.get()


@contextmanager
def acting_as(actor: str, request_id: str | None = None) -> Iterator[Cause]:
    """Record ``actor`` (and ``request_id``) on every event appended inside the block.

    A request id left out is kept from an enclosing block (the HTTP service sets
    the request's id, then the key's actor). Bad tokens raise
    :class:`~chatledger.domain.errors.InvalidValueError` before anything runs."""
    checked_token(actor, "actor")
    if request_id is None:
        outer = _CURRENT.get()
        request_id = outer.request_id if outer is not None else None
    else:
        checked_token(request_id, "request_id")
    cause = Cause(actor, request_id)
    token = _CURRENT.set(cause)
    try:
        yield cause
    finally:
        _CURRENT.reset(token)


def adopt(actor: str) -> Cause:
    """Make ``actor`` this context's actor from now on (a command line's process,
    an HTTP request's task once its key is known), keeping the request id."""
    checked_token(actor, "actor")
    outer = _CURRENT.get()
    cause = Cause(actor, outer.request_id if outer is not None else None)
    _CURRENT.set(cause)
    return cause


def safe_token(text: str, fallback: str = UNKNOWN) -> str:
    """``text`` with every character an actor cannot hold replaced by ``_`` (e.g. a
    login name for ``operator:<name>``), cut to 128 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._:@/+=-]", "_", text)[:128]
    return cleaned or fallback


__all__ = [
    "SWEEPER", "UNKNOWN", "UNRECORDED", "Cause", "acting_as", "adopt", "checked_token", "current_cause", "safe_token",
]
