"""What a runner reports: each read model's position, and a progress callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after each batch by long jobs."""


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    failed: int = 0
    """Events up to ``position`` this read model could not apply (each
    recorded: :meth:`ProjectionRunner.failures`, ``ledger.projection_failures()``)."""

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)
