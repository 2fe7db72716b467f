"""What the webhook worker reads from: the ordered event feed, as a Protocol (the facade,
``ChatLedger``, is one), so :mod:`.webhooks` need not import the facade that builds it;
and where it keeps its positions and dead letters (its tables, keyed by subscription)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import BigInteger, Column, Engine, Integer, MetaData, String, Table, Text

from ..domain.tenancy import SCOPED_MAX_CHARS, scoped_key
from ..projections.columns import widen_columns
from ..projections.prefixes import on
from ..projections.sqltypes import UTCDateTime

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
    return scoped_key(tenant, name)  # at most SUBSCRIPTION_CHARS: a name is an id (<= 200)


WEBHOOKS = MetaData()
positions_table = Table(
    "chatledger_webhook_positions",
    WEBHOOKS,
    Column("subscription", String(SUBSCRIPTION_CHARS), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
dead_letters_table = Table(
    "chatledger_dead_letters",
    WEBHOOKS,
    Column("subscription", String(SUBSCRIPTION_CHARS), primary_key=True),
    Column("position", BigInteger, primary_key=True),
    Column("event_id", String(200), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("failed_at", UTCDateTime, nullable=False),
    Column("outcome", String(20), nullable=False),
)


def create_tables(engine: Engine) -> None:
    """The webhook tables, created if missing, their keys widened if a store's are
    narrower (0.5: a named tenant's subscription key, see :func:`subscription_key`)."""
    metadata = on(engine, positions_table).metadata
    metadata.create_all(engine)
    widen_columns(engine, metadata)


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
