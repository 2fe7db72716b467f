"""Tenants: many bots or customers in one store, each seeing only its own data.

A tenant is a short name (``"acme"``, ``"support-bot"``). Every store has the
tenant :data:`DEFAULT_TENANT`; a store written before tenants existed is wholly
that tenant, with its ids unchanged. Tenant names are case-sensitive: ``"Acme"``
and ``"acme"`` are two tenants.

A key that is global to the store -- the owner of a content key, a memory key, a
webhook subscription -- is namespaced by :func:`scoped_key`: unchanged for the
default tenant; for any other, ``tenant + "\\x1f" + key`` padded with ``"\\x1f"`` to
:data:`SCOPED_MIN_CHARS` characters. No release ever accepted an id longer than
200 characters (:data:`~chatledger.domain.validation.ID_CEILING`), so a named
tenant's key is never a default-tenant key, whatever an old store holds (a 0.4
visitor id could be ``"acme\\x1fbob"``); and a named tenant's ids never hold the
separator, so its key names one (tenant, id). Nothing parses a key back: the read
models that need the tenant keep it in a column. A visitor's aggregate id is
derived in a namespace of its own for named tenants (see
:func:`~chatledger.domain.visitor.visitor_aggregate_id`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import InvalidCommandError
from .validation import ID_CEILING

DEFAULT_TENANT = "default"
"""The tenant of every store that names none (and of everything stored before 0.5)."""

TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
SEPARATOR = "\x1f"  # ASCII unit separator: never in a tenant name nor in a named tenant's ids
TENANT_CHARS = 64
SCOPED_MIN_CHARS = ID_CEILING + 1
"""A named tenant's scoped key is at least this long: longer than any id of any release."""
SCOPED_MAX_CHARS = TENANT_CHARS + 1 + ID_CEILING
"""The longest scoped key (the width of the columns that hold one)."""
Upcaster = Callable[[dict[str, object]], None]


def check_tenant(tenant: object) -> str:
    """``tenant`` if it is a tenant name (1-64 of letters, digits, ``. _ : -``,
    starting with a letter or digit; case-sensitive: ``"Acme"`` and ``"acme"`` are two
    tenants), else :class:`InvalidCommandError`."""
    if not isinstance(tenant, str) or TENANT_PATTERN.fullmatch(tenant) is None:
        raise InvalidCommandError(
            "A tenant is 1 to 64 letters, digits, '.', '_', ':' or '-', starting with a letter "
            f"or digit; got {tenant!r:.80}."
        )
    return tenant


def default_tenant(state: dict[str, object]) -> None:
    """The upcaster of an event stored before tenants: it was the default tenant's."""
    state["tenant"] = DEFAULT_TENANT


def scoped_key(tenant: str, key: str) -> str:
    """``key`` within ``tenant``: the key itself in the default tenant, else
    ``tenant + "\\x1f" + key`` padded with ``"\\x1f"`` to :data:`SCOPED_MIN_CHARS`
    (see the module docstring). A named tenant's key holding the separator is an
    :class:`InvalidCommandError` (the ids of named tenants are checked before)."""
    if tenant == DEFAULT_TENANT:
        return key
    if SEPARATOR in key:
        raise InvalidCommandError(
            f"An id of tenant {tenant!r} cannot contain the unit separator (\\x1f); remove it."
        )
    return f"{tenant}{SEPARATOR}{key}".ljust(SCOPED_MIN_CHARS, SEPARATOR)


__all__ = [
    "DEFAULT_TENANT",
    "SCOPED_MAX_CHARS",
    "SCOPED_MIN_CHARS",
    "SEPARATOR",
    "TENANT_CHARS",
    "TENANT_PATTERN",
    "Upcaster",
    "check_tenant",
    "default_tenant",
    "scoped_key",
]
