"""What the webhook worker reads from: the ordered event feed, as a Protocol (the facade,
``ChatLedger``, is one), so :mod:`.webhooks` need not import the facade that builds it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..domain.errors import InvalidValueError
from ..domain.tenancy import SCOPED_MAX_CHARS, scoped_key

if TYPE_CHECKING:
    from ..domain.validation import Limits
    from ..infrastructure.settings import Settings
    from ..projections.runner import ProjectionRunner
    from .subscribers import LogEvent

SUBSCRIPTION_CHARS = SCOPED_MAX_CHARS  # the width of the webhook tables' subscription columns


def subscription_key(tenant: str, name: str) -> str:
    """The stored key of subscription ``name`` of ``tenant``: a name is the tenant's own
    (two tenants' "crm" are two subscriptions, with two positions and their own dead
    letters); the default tenant's key is the name itself, as in stores before tenants,
    and no default-tenant name is a named tenant's key (see ``scoped_key``)."""
    key = scoped_key(tenant, name)
    if len(key) > SUBSCRIPTION_CHARS:
        raise InvalidValueError(
            "name", "length",
            f"name has {len(name)} characters; with the tenant {tenant!r} a subscription name has at most "
            f"{SUBSCRIPTION_CHARS - len(key) + len(name)}.",
        )
    return key


class EventFeed(Protocol):
    """The facade's parts the worker uses."""

    @property
    def limits(self) -> Limits: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def projector(self) -> ProjectionRunner: ...

    @property
    def recorder(self) -> Any: ...

    @property
    def tenant_id(self) -> str: ...

    def events_after(
        self, position: int = 0, *, limit: int = 1000, content: bool = False
    ) -> list[LogEvent]: ...
