"""The optimistic-concurrency loop of a command: cached first run, then fresh re-runs.

A :class:`CommandAttempts` is shared by a ledger and its tenant handles. Its
thread-local state says whether this thread's command is on its first, cached
attempt (:meth:`~CommandAttempts.fresh_read`) and whether that attempt read
anything from the cache (see docs/architecture.md, "No read before write").
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from eventsourcing.persistence import RecordConflictError

from ..domain.errors import ChatLedgerError, CommitOutcomeUnknownError, ConcurrencyConflictError
from .counters import LedgerCounters

T = TypeVar("T")


class FreshReadNeeded(RecordConflictError):
    """A first run that decided on cached copies must be re-run on fresh reads, though no
    writer raced it (an answer that writes nothing, a decision to write nothing): re-run like a
    conflict, but not counted as one."""


class CommandAttempts:
    """Runs commands until no concurrent writer beats them (see :meth:`run`)."""

    def __init__(self, retries: int, counters: LedgerCounters) -> None:
        self.retries = retries
        self.counters = counters
        self._state = threading.local()  # .first: on the first attempt; .used_cache

    def run(self, what: str, command: Callable[[], T]) -> T:
        """Run ``command`` until it is not beaten by a concurrent writer.

        A first run may decide on cached aggregates (the reads that pass
        ``cached=True``: no read of the store); if one was stale its save
        conflicts, and the command is run again with every read from the store,
        up to ``retries`` times, as if the cached run had not happened.

        A refusal (any :class:`ChatLedgerError` but
        :class:`ConcurrencyConflictError`) on the cached run is not trusted
        either: the command is re-run on fresh reads, like after a conflict, so
        an error the caller sees was decided on the store's data. A run that
        read nothing from the cache (:meth:`fresh_read` notes each cached read)
        was decided on the store: its refusal is raised at once, not re-run.
        :class:`CommitOutcomeUnknownError` is never re-run (its write may have
        committed)."""
        state = self._state
        outer: bool | None = getattr(state, "first", None)  # None: not inside another command
        outer_used: bool = getattr(state, "used_cache", False)
        count = self.counters.add
        try:
            if outer is not False:
                state.first = True  # on cached reads: a conflict here costs no attempt
                state.used_cache = False  # set by fresh_read when a read skips the store
                try:
                    return command()
                except FreshReadNeeded:
                    count("fresh_reads")
                except RecordConflictError:
                    count("conflicts")
                except (ConcurrencyConflictError, CommitOutcomeUnknownError):
                    raise  # never re-run a command whose write may have landed
                except ChatLedgerError:
                    if not state.used_cache:
                        raise  # decided on the store's data already: nothing to decide again
                    count("fresh_reads")  # perhaps refused on a stale copy: decided again
                count("retries")
            state.first = False
            for attempt in range(self.retries):
                try:
                    return command()
                except RecordConflictError as err:
                    count("fresh_reads" if isinstance(err, FreshReadNeeded) else "conflicts")
                    count("retries")
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))  # full jitter
        finally:
            state.first = outer
            state.used_cache = outer_used or getattr(state, "used_cache", False)
        count("conflicts_exhausted")
        raise ConcurrencyConflictError(what, self.retries)

    @property
    def first(self) -> bool:
        """Whether this thread's command is on its first (cached) attempt."""
        return bool(getattr(self._state, "first", None))

    def fresh_read(self, cached: bool) -> bool:
        """Whether a read must see the store: always, unless ``cached`` and this
        thread's command is on its first attempt (see :meth:`run`)."""
        if cached and self.first:
            self._state.used_cache = True
            return False
        return True

    def answer_from_store(self) -> None:
        """Re-run this command on fresh reads (a conflict) if it is on its first
        attempt: for an answer that writes nothing -- a duplicate message, a
        client-id conflict -- a cached copy is not trusted (an erasure may have
        blanked its content since, and nothing written would conflict)."""
        if self.first:
            raise FreshReadNeeded("answered from cached reads: re-read and answer again")


__all__ = ["CommandAttempts", "FreshReadNeeded"]
