"""The ``Visitor`` aggregate: which session is a visitor's current one, and who they are.

Its id is derived from the visitor key (uuid5), so two servers that see the
same visitor's first message at once both try to create the *same* aggregate at
version 1. The store's optimistic concurrency lets exactly one win; the loser
retries and joins the winner's session. That is how one visitor never has two
active sessions.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from .conversation import check_name
from .erasure import ErasureReceipt
from .errors import IdentityConflictError
from .pydantic_aggregates import Aggregate, AggregateSnapshot, SnapshotState, utc
from .tenancy import DEFAULT_TENANT, SEPARATOR, Upcaster, check_tenant, default_tenant, scoped_key

VISITOR_NAMESPACE = uuid5(NAMESPACE_URL, "https://chatledger.invalid/visitor")
TENANT_VISITOR_NAMESPACE = uuid5(NAMESPACE_URL, "https://chatledger.invalid/tenant-visitor")
"""Named tenants' visitors: a namespace of their own, so no visitor id of the default
tenant (whatever an old store holds, e.g. ``"acme\\x1fbob"``) has the id of one."""


def visitor_aggregate_id(visitor_id: str, tenant: str = DEFAULT_TENANT) -> UUID:
    """The deterministic aggregate id of a visitor key within ``tenant``: the
    default tenant's are those of stores written before tenants existed
    (``uuid5(VISITOR_NAMESPACE, visitor_id)``); a named tenant's are
    ``uuid5(TENANT_VISITOR_NAMESPACE, tenant + "\\x1f" + visitor_id)`` (a tenant name
    and a named tenant's ids never hold the separator, so it is one pair)."""
    if tenant == DEFAULT_TENANT:
        return uuid5(VISITOR_NAMESPACE, visitor_id)
    scoped_key(tenant, visitor_id)  # refuses an id with the separator
    return uuid5(TENANT_VISITOR_NAMESPACE, f"{tenant}{SEPARATOR}{visitor_id}")


class VisitorSnapshotState(SnapshotState):
    visitor_id: str
    tenant: str
    user_id: str | None
    current_session_id: UUID | None
    session_ids: list[UUID]


class Visitor(Aggregate):
    """One browser, device or channel identity (anonymous until linked)."""

    # A list of UUIDs only (see Aggregate.__deepcopy__).
    shallow_containers = Aggregate.shallow_containers | {"session_ids"}

    class Snapshot(AggregateSnapshot):
        class_version = 2  # 2 (0.5): the tenant
        state: VisitorSnapshotState

    class Event(Aggregate.Event):
        pass

    class Registered(Event, Aggregate.Created):
        """A visitor was seen for the first time (in ``tenant``)."""

        class_version = 2  # 2 (0.5): the tenant
        visitor_id: str
        tenant: str

        upcast_v1_v2: ClassVar[Upcaster] = staticmethod(default_tenant)

        def apply(self, v: Visitor) -> None:
            v.visitor_id = self.visitor_id
            v.tenant = self.tenant
            v.user_id = None
            v.current_session_id = None
            v.session_ids = []

    class SessionOpened(Event):
        """A new session became the visitor's current one."""

        session_id: UUID

        def apply(self, v: Visitor) -> None:
            v.current_session_id = self.session_id
            v.session_ids.append(self.session_id)

    class IdentityLinked(Event):
        """The visitor was identified as an authenticated user."""

        user_id: str

        def apply(self, v: Visitor) -> None:
            v.user_id = self.user_id

    class DataErased(Event):
        """The visitor's personal content was erased (its keys destroyed).

        Records the receipt. The aggregate's state is unchanged: ids and the
        session list are not personal content, and the visitor may come back.
        """

        receipt: ErasureReceipt

        def apply(self, v: Visitor) -> None:
            pass

    if TYPE_CHECKING:
        visitor_id: str
        tenant: str
        user_id: str | None
        current_session_id: UUID | None
        session_ids: list[UUID]

    @classmethod
    def register(cls, visitor_id: str, *, at: datetime, tenant: str = DEFAULT_TENANT) -> Visitor:
        check_name("visitor id", visitor_id)
        return cls._create(
            cls.Registered,
            id=visitor_aggregate_id(visitor_id, check_tenant(tenant)),
            occurred_at=utc(at),
            visitor_id=visitor_id,
            tenant=tenant,
        )

    @property
    def key_owner(self) -> str:
        """Who the visitor's content keys belong to (the visitor id, within its tenant)."""
        return scoped_key(self.tenant, self.visitor_id)

    def open_session(self, session_id: UUID, *, at: datetime) -> None:
        self.trigger_event(self.SessionOpened, occurred_at=utc(at), session_id=session_id)

    def record_erasure(self, receipt: ErasureReceipt) -> None:
        self.trigger_event(self.DataErased, occurred_at=utc(receipt.erased_at), receipt=receipt)

    def link_identity(self, user_id: str, *, at: datetime) -> bool:
        """Link to ``user_id``; False if already linked to it, error if to another."""
        check_name("user id", user_id)
        if self.user_id == user_id:
            return False
        if self.user_id is not None:
            raise IdentityConflictError(self.visitor_id, self.user_id, user_id)
        self.trigger_event(self.IdentityLinked, occurred_at=utc(at), user_id=user_id)
        return True
