"""Group commit: concurrent commands of one process share one transaction.

:class:`GroupCommitEventStore` is eventsourcing's ``EventStore`` (installed
through the Application's public ``construct_event_store`` hook) whose
``put`` does not insert its caller's events itself. Each caller maps its
(already validated) events to stored events in its own thread, outside any
lock, and enqueues them; then it waits for the process's write turn. Whoever
holds the turn (the *leader*) takes every caller waiting (up to
``max_batch_events`` events, oldest first), writes them with ONE
``recorder.insert_events`` -- one transaction, one table lock on PostgreSQL,
one fsync -- and hands each caller its own notification ids. A caller that
finds its events written when its turn comes returns at once.

- A lone caller takes the turn at once and writes only its own events: no
  added latency.
- Each command stays atomic: its events are all in the batch's transaction or
  none are. If a batch of several callers fails (a version conflict, a stale
  key, a unique violation or ``DataError`` that aborts a PostgreSQL
  transaction, ...), it is split and every caller's events are written alone,
  so each caller gets its own result or its own exception and the others land.
- A caller returns only when its own events are committed (or failed).
- A caller interrupted while it waits (a signal handler's exception, such as
  a deadline's ``TimeoutError``, or ``KeyboardInterrupt``) gets that exception
  if its events were still queued: they are taken out of the queue and are
  definitely not written. If a leader had taken them already they may be
  committed or not: the caller gets :class:`CommitOutcomeUnknownError` (from the
  interrupting ``Exception``; a ``BaseException`` such as ``KeyboardInterrupt``
  is re-raised as it is, with a note saying so). So does every caller of a
  batch whose write was interrupted, or whose events were lost from the queue.
- Events with recorder keyword arguments (tracking), and an erasure's
  ``Visitor.DataErased`` (which destroys keys in its transaction), are never
  batched with other callers' events.

Projections do not see gaps: a batch is one ``insert_events`` like any other,
so notification ids stay assigned under the recorder's lock held through
COMMIT (PostgreSQL) or SQLite's single writer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import EventStore, Notification, Recording, StoredEvent
from eventsourcing.utils import get_topic

from ..domain.errors import CommitOutcomeUnknownError
from ..domain.visitor import Visitor

ERASURE_TOPIC = get_topic(Visitor.DataErased)
OUTCOME_UNKNOWN = "the write was interrupted; this command's outcome is unknown"


class Pending:
    """One caller's events, waiting for a write turn, and their outcome."""

    __slots__ = ("done", "error", "ids", "kwargs", "ok", "solo", "stored")

    def __init__(self, stored: list[StoredEvent], kwargs: dict[str, Any]) -> None:
        self.stored = stored
        self.kwargs = kwargs
        self.solo = bool(kwargs) or any(s.topic == ERASURE_TOPIC for s in stored)
        self.done = False
        self.ok = False
        self.ids: Sequence[int] | None = None
        self.error: BaseException | None = None


class GroupCommitEventStore(EventStore[UUID]):
    """eventsourcing's event store whose ``put`` commits together with the
    other callers waiting in this process (see the module docstring)."""

    max_batch_events = 2000
    """Most events one shared transaction takes (a caller's own are never split)."""

    def __init__(self, mapper: Any, recorder: Any) -> None:
        super().__init__(mapper=mapper, recorder=recorder)
        self._queue: deque[Pending] = deque()
        self._queue_lock = threading.Lock()
        self._turn = threading.Lock()  # one writer of this store at a time in this process
        self.batches = 0
        """Transactions committed with more than one caller's events (for tests and benchmarks)."""
        self.split_batches = 0
        """Batches of several callers that failed and were written caller by caller."""
        self.batched_callers = 0
        """Callers whose events went into those transactions (``/ batches``: the mean batch)."""

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold this process's write turn: callers queue up meanwhile and are
        written together when it is released (for tests and benchmarks)."""
        with self._turn:
            yield

    def waiting(self) -> int:
        """Callers queued for a write turn."""
        with self._queue_lock:
            return len(self._queue)

    def put(self, domain_events: Sequence[Any], **kwargs: Any) -> list[Any]:
        """Map and store ``domain_events`` (committed together with whatever
        other callers are waiting); the library's ``Recording`` objects."""
        stored = list(map(self.mapper.to_stored_event, domain_events))
        if not stored:
            return []
        item = Pending(stored, {k: v for k, v in kwargs.items() if v is not None})  # save passes tracking=None
        with self._queue_lock:
            self._queue.append(item)
        try:
            while not item.done:
                with self._turn:
                    if item.done:
                        break
                    if not self._queued(item):  # taken by a leader that lost it: never to be done
                        item.error = CommitOutcomeUnknownError(OUTCOME_UNKNOWN)
                        break
                    self._write_next()
        except BaseException as err:
            with self._queue_lock:
                if item in self._queue:  # definitely not written
                    self._queue.remove(item)
                    raise
            if not isinstance(err, Exception):
                err.add_note(OUTCOME_UNKNOWN)
                raise
            raise CommitOutcomeUnknownError(OUTCOME_UNKNOWN) from err
        if item.error is not None:
            raise item.error
        ids = item.ids
        if not ids:
            return []
        assert len(ids) == len(stored)
        return [
            Recording(
                d,
                Notification(
                    originator_id=s.originator_id,
                    originator_version=s.originator_version,
                    topic=s.topic,
                    state=s.state,
                    id=n_id,
                ),
            )
            for d, s, n_id in zip(domain_events, stored, ids, strict=True)
        ]

    def _queued(self, item: Pending) -> bool:
        with self._queue_lock:
            return item in self._queue

    def _take(self) -> list[Pending]:
        """The oldest waiting callers, up to ``max_batch_events`` events (at
        least one caller; a solo caller only alone)."""
        batch: list[Pending] = []
        events = 0
        with self._queue_lock:
            queue = self._queue
            while queue:
                head = queue[0]
                if batch and (head.solo or batch[0].solo or events + len(head.stored) > self.max_batch_events):
                    break
                batch.append(queue.popleft())
                events += len(head.stored)
        return batch

    def _write_next(self) -> None:
        """Take the oldest waiting callers and write them in one transaction; if
        that fails with several callers in it, write each caller alone. Every
        caller taken is marked done."""
        batch: list[Pending] = []
        try:
            batch = self._take()
            if not batch:
                return
            if len(batch) == 1:
                self._write_alone(batch[0])
                return
            try:
                ids = self.recorder.insert_events([s for p in batch for s in p.stored])
            except Exception:  # noqa: BLE001 - each caller is retried alone and gets its own outcome
                self.split_batches += 1
                for item in batch:
                    self._write_alone(item)
                return
            self.batches += 1
            self.batched_callers += len(batch)
            start = 0
            for item in batch:
                end = start + len(item.stored)
                item.ids = ids[start:end] if ids else None
                item.ok = True
                start = end
        finally:
            for item in batch:
                if not item.ok and item.error is None:  # a BaseException went through: no caller waits forever
                    item.error = CommitOutcomeUnknownError(OUTCOME_UNKNOWN)
                item.done = True

    def _write_alone(self, item: Pending) -> None:
        try:
            item.ids = self.recorder.insert_events(item.stored, **item.kwargs)
            item.ok = True
        except Exception as err:  # noqa: BLE001 - handed to its caller
            item.error = err


__all__ = ["CommitOutcomeUnknownError", "GroupCommitEventStore", "Pending"]
