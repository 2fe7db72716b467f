"""What this process's ledger did, counted for monitoring (``/metrics`` reads them).

Monotonic counts since the ledger opened, kept by the unit of work, the group commit, the sweep
and the erasure; no third-party package (the service maps them to Prometheus metrics).
"""

from __future__ import annotations

import threading

NAMES = (
    "commands",  # commands that committed events
    "events_appended",  # events those commits stored
    "conflicts",  # saves that lost an optimistic-concurrency race to another writer
    "fresh_reads",  # first runs re-run on fresh reads though no writer raced (cached copies)
    "retries",  # re-runs of a command, for either reason
    "conflicts_exhausted",  # commands that failed with ConcurrencyConflictError
    "sweeps",
    "sweep_seconds",
    "sweep_timed_out",
    "erasures",
)


class LedgerCounters:
    """Thread-safe counts by name (:data:`NAMES`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(NAMES, 0)

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def values(self) -> dict[str, float]:
        """A consistent copy of every count."""
        with self._lock:
            return dict(self._values)


__all__ = ["NAMES", "LedgerCounters"]
