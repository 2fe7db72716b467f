"""What an erasure removed: the receipt the caller gets and the log records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from uuid import UUID

from pydantic import AwareDatetime

from .pydantic_aggregates import Immutable
from .tenancy import scoped_key

ERASED_TEXT = "[erased]"
"""What an erased message text reads as, in replay, exports and read models."""

ERASED_METADATA = {"$erased": True}
"""What erased (non-empty) message or client metadata reads as."""

ERASED_VALUES: Mapping[str, Any] = {
    "text": ERASED_TEXT,
    "metadata": ERASED_METADATA,
    "context": {"client_metadata": ERASED_METADATA},
    "value": None,
    "client_message_id": None,
    "reason": ERASED_TEXT,
}
"""What a personal field reads as once erased, by field name: the decoder's
markers for destroyed keys and ``Session.ContentErased`` use these same values."""


class ErasureReceipt(Immutable):
    """Proof of one erasure by crypto-shredding.

    ``key_ids`` are the content keys destroyed (never the keys themselves);
    ``events_affected`` counts the stored events whose personal fields were
    encrypted under them and now read as erased. Ids, times, event types and
    counts stay in the log: they are not personal content.
    """

    erasure_id: UUID
    subject: Literal["user", "visitor"]
    user_id: str | None
    visitor_ids: tuple[str, ...]
    session_ids: tuple[UUID, ...]
    key_ids: tuple[str, ...]
    events_affected: int
    erased_at: AwareDatetime
    tenant: str = "default"
    """The tenant of the visitors (a receipt stored before tenants: the default one)."""

    @property
    def key_owners(self) -> tuple[str, ...]:
        """Whose content keys the erasure destroys: the visitors, within the tenant."""
        return tuple(scoped_key(self.tenant, v) for v in self.visitor_ids)
