"""What the webhook worker reads from: the ordered event feed, as a Protocol (the facade,
``ChatLedger``, is one), so :mod:`.webhooks` need not import the facade that builds it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..domain.validation import Limits
    from ..infrastructure.settings import Settings
    from ..projections.runner import ProjectionRunner
    from .subscribers import LogEvent


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
