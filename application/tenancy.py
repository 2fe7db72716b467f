"""Tenant handles: one ledger per tenant over one store.

``ledger.tenant("acme")`` is a :class:`~chatledger.ChatLedger` for the tenant
``"acme"`` that shares everything of ``ledger`` that belongs to the store: the
event store and its connection pool, the recorder and key ring, the aggregate
cache, the snapshot store and the read-model runner. What it owns is what makes
it the tenant's: its tenant id (every command and query is scoped by it, see
:mod:`chatledger.domain.tenancy`), its session policy and its limits. A handle is
a shallow copy, made once per tenant and kept by the root ledger, so a process
serving a thousand tenants holds a thousand small objects and one store.

Closing a handle does nothing; closing the root ledger closes the store of
every handle. A named tenant's handle leads nowhere else: no public way back to the
root ledger, and its ``tenant()`` gives only itself
(:meth:`~chatledger.application.unit_of_work.UnitOfWork.refuse_on_tenant_handle`).
"""

from __future__ import annotations

import copy
import threading
from typing import Any, TypeVar

from ..domain.errors import InvalidPolicyError
from ..domain.policy import SessionPolicy
from ..domain.tenancy import check_tenant
from ..domain.validation import Limits

L = TypeVar("L")  # a UnitOfWork (the facade); this module is imported by unit_of_work

# Per handle: what is the tenant's own, rebuilt for it (the others are shared).
TENANT_OWN = ("projection_reads", "background", "_tenant_handles", "_tenant_lock")


def tenant_handle(
    ledger: L, tenant: str, policy: SessionPolicy | None = None, limits: Limits | None = None
) -> L:
    """The handle of ``tenant`` on ``ledger``'s store (see the module docstring).

    Without ``policy`` / ``limits``, the tenant's handle keeps the ones it was
    first given, else the root ledger's. Given, they are the tenant's from now
    on in this process (a new handle; handles given out before keep theirs);
    every session records the policy it started under, so a change never
    alters how stored sessions replay."""
    tenant = check_tenant(tenant)
    if policy is not None and not isinstance(policy, SessionPolicy):
        raise InvalidPolicyError(f"policy must be a SessionPolicy, not {type(policy).__name__}.")
    if limits is not None and not isinstance(limits, Limits):
        raise InvalidPolicyError(f"limits must be chatledger Limits, not {type(limits).__name__}.")
    root: Any = getattr(ledger, "_root")  # noqa: B009 -- typed loosely (see L)
    lock: threading.Lock = root.__dict__.setdefault("_tenant_lock", threading.Lock())
    with lock:
        handles: dict[str, Any] = root.__dict__.setdefault("_tenant_handles", {})
        found: Any = handles.get(tenant)
        if found is None and tenant == root.tenant_id:
            found = root
        if (
            found is not None
            and (policy is None or policy == found.policy)
            and (limits is None or limits == found.limits)
        ):
            return found  # type: ignore[no-any-return]
        root.projector  # noqa: B018 -- built once, shared by every handle
        handle = copy.copy(root)
        for name in TENANT_OWN:
            handle.__dict__.pop(name, None)
        handle.tenant_id = tenant
        handle.policy = policy or (found.policy if found is not None else root.policy)
        handle.limits = limits or (found.limits if found is not None else root.limits)
        handles[tenant] = handle
        return handle  # type: ignore[no-any-return]


__all__ = ["tenant_handle"]
