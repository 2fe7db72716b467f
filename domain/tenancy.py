"""Tenants: many bots or customers in one store, each seeing only its own data.

A tenant is a short name (``"acme"``, ``"support-bot"``). Every store has the
tenant :data:`DEFAULT_TENANT`; a store written before tenants existed is wholly
that tenant, with its ids unchanged. A key that is global to the store -- the
visitor key behind a visitor's aggregate id, the owner of a content key -- is
namespaced by :func:`scoped_key`: unchanged for the default tenant, prefixed by
the tenant and a unit separator (which no tenant name contains) for any other,
so the same visitor id in two tenants is two people with two keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import InvalidCommandError

DEFAULT_TENANT = "default"
"""The tenant of every store that names none (and of everything stored before 0.5)."""

TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
SEPARATOR = "\x1f"  # ASCII unit separator: never in a tenant name
Upcaster = Callable[[dict[str, object]], None]


def check_tenant(tenant: object) -> str:
    """``tenant`` if it is a tenant name (1-64 of letters, digits, ``. _ : -``,
    starting with a letter or digit), else :class:`InvalidCommandError`."""
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
    ``tenant + "\\x1f" + key``."""
    return key if tenant == DEFAULT_TENANT else f"{tenant}{SEPARATOR}{key}"


def tenant_of(key: str) -> str:
    """The tenant of a key :func:`scoped_key` made."""
    tenant, sep, _ = key.partition(SEPARATOR)
    return tenant if sep else DEFAULT_TENANT


__all__ = [
    "DEFAULT_TENANT",
    "SEPARATOR",
    "TENANT_PATTERN",
    "Upcaster",
    "check_tenant",
    "default_tenant",
    "scoped_key",
    "tenant_of",
]
