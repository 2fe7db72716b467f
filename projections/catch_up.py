"""The catch-up loop: read a batch of the log once, decode it once, apply it
to each read model at that position in its own transaction, with its own
compare-and-set tracking; an event a read model cannot apply is recorded and
skipped by that read model only (``failures.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper

from .failures import is_event_error
from .gc_pause import gc_paused
from .log_reader import read_notifications
from .read_model import ReadModel, personal_set, topic_set
from .status import Progress
from .tracking import TrackingConflict


class CatchUp:
    """Brings read models up to the head of one application's notification log."""

    def __init__(self, application_name: str, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> None:
        self.application_name = application_name
        self.recorder = recorder
        self.mapper = mapper

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0

    def run(self, projections: Sequence[ReadModel], batch_size: int, progress: Progress | None) -> int:
        """Catch ``projections`` up to the head of the log.

        Read models at the same position share each batch: it is read and
        decoded once, then applied to each of them in its own transaction with
        its own compare-and-set tracking (so a read model that another runner
        moved, or that started elsewhere, simply continues from its position).
        """
        head = self.head()
        positions = {p.name: p.view.max_tracking_id(self.application_name) or 0 for p in projections}
        # A long catch-up (a rebuild, or a runner far behind) writes in bulk mode.
        bulk = head - min(positions.values(), default=head) > 4 * batch_size
        if not bulk:
            return self.apply(projections, batch_size, progress, head, positions, bulk=False)
        with gc_paused():
            return self.apply(projections, batch_size, progress, head, positions, bulk=True)

    def apply(
        self,
        projections: Sequence[ReadModel],
        batch_size: int,
        progress: Progress | None,
        head: int,
        positions: dict[str, int],
        *,
        bulk: bool,
    ) -> int:
        starts = dict(positions)
        applied = 0
        analyze_at = {p.name: max(batch_size, 5000) for p in projections}
        while True:
            behind = [p for p in projections if positions[p.name] < head]
            if not behind:
                break
            low = min(positions[p.name] for p in behind)
            group = [p for p in behind if positions[p.name] == low]
            batch = self.read(low, batch_size, head)
            if not batch:
                break
            last = batch[-1].id
            try:
                events = self._decode(batch, group)
                undecodable: dict[int, Exception] = {}
            except Exception as err:
                if not is_event_error(err):
                    raise
                events, undecodable = self._decode_each(batch, group)
            everything = [(n.id, n.topic, e) for n, e in zip(batch, events)]
            for projection in group:
                view = projection.view
                wanted = topic_set(projection)
                handled = [
                    (i, e) for i, topic, e in everything if wanted is None or topic in wanted
                ]
                broken = []
                if undecodable:  # recorded for each read model that wanted them
                    broken = [(n, undecodable[n.id]) for n in batch if n.id in undecodable
                              and (wanted is None or n.topic in wanted)]  # fmt: skip
                    handled = [(i, e) for i, e in handled if i not in undecodable]
                projection.discard()
                try:
                    try:
                        with view.transaction(bulk=bulk):
                            # Claim the batch first: a racing runner blocks here, then fails
                            # the compare-and-set and skips to the winner's position.
                            view.advance_tracking(self.application_name, low, last)
                            projection.prepare([e for _, e in handled])
                            projection.process_batch(self.application_name, handled)
                            projection.flush()
                            for record, error in broken:
                                view.record_failure(self.application_name, record, error)
                    except Exception as err:
                        projection.discard()
                        if not is_event_error(err):
                            raise
                        # One event (or more) this read model cannot apply: apply the
                        # batch again in parts, recording and skipping only those.
                        with view.transaction(bulk=bulk):
                            view.advance_tracking(self.application_name, low, last)
                            records = {n.id: n for n in batch}
                            self._apply_parts(projection, handled, records)
                            for record, error in broken:
                                view.record_failure(self.application_name, record, error)
                except TrackingConflict:
                    # Another runner applied these events; continue from its position.
                    projection.discard()
                    positions[projection.name] = view.max_tracking_id(self.application_name) or 0
                    continue
                except BaseException:
                    projection.discard()
                    raise
                projection.discard()
                applied += len(batch)
                positions[projection.name] = last
                # A long catch-up (a rebuild) grows tables faster than autovacuum
                # analyzes them: refresh statistics as they double (PostgreSQL).
                done = last - starts[projection.name]
                if done >= analyze_at[projection.name]:
                    view.analyze()
                    analyze_at[projection.name] = 2 * done
            if progress is not None:
                progress(
                    sum(positions[p.name] - starts[p.name] for p in projections),
                    sum(head - starts[p.name] for p in projections),
                )
        if bulk and projections:
            projections[0].view.checkpoint()
        return applied

    def _apply_parts(
        self, projection: ReadModel, items: Sequence[tuple[int, Any]], records: dict[int, Any]
    ) -> None:
        """Apply ``items`` inside the current transaction, each half in a
        savepoint of its own, halving again a half that fails, down to the
        single events that fail on their own: those are recorded and skipped.
        A batch with one bad event of 5,000 is applied in about 26 parts.
        Each part is a batch of its own to the read model (``discard``,
        ``prepare``, ``process_batch``, ``flush``), so no state of a part
        rolled back reaches the next."""
        conn = projection.view.conn
        pending = [list(items)]
        while pending:
            part = pending.pop()
            if not part:
                continue
            projection.discard()
            try:
                with conn.begin_nested():
                    projection.prepare([e for _, e in part])
                    projection.process_batch(self.application_name, part)
                    projection.flush()
            except Exception as err:
                projection.discard()
                if not is_event_error(err):
                    raise
                if len(part) == 1:
                    projection.view.record_failure(self.application_name, records[part[0][0]], err)
                else:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]  # first half next: log order
        projection.discard()

    def _decode_each(
        self, batch: Sequence[Any], group: Sequence[ReadModel]
    ) -> tuple[list[Any], dict[int, Exception]]:
        """Decode a batch that failed to decode, one event at a time: the
        events (``None`` for those that fail) and the errors by position."""
        events: list[Any] = []
        errors: dict[int, Exception] = {}
        for record in batch:
            try:
                events.extend(self._decode([record], group))
            except Exception as err:
                if not is_event_error(err):
                    raise
                events.append(None)
                errors[record.id] = err
        return events, errors

    def read(self, position: int, limit: int, stop: int) -> Sequence[Any]:
        """Notifications after ``position`` up to ``stop`` (at most ``limit``)."""
        return read_notifications(self.recorder, position, limit, stop)

    def _decode(self, batch: Sequence[Any], group: Sequence[ReadModel]) -> list[Any]:
        """The batch's events, decoded once; ``None`` for topics no read model
        of ``group`` handles (``Projection.topics``; empty = all)."""
        sets = [topic_set(p) for p in group]
        wanted = None if None in sets else set().union(*sets)  # type: ignore[arg-type]
        decode = self.mapper.to_domain_event
        sealed = getattr(self.mapper, "to_sealed_event", None)
        personal = [personal_set(p) for p in group]
        if sealed is None or None in personal:
            prefetch = getattr(self.mapper, "prefetch_keys", None)
            if prefetch is not None:
                prefetch(batch)
            return [decode(n) if wanted is None or n.topic in wanted else None for n in batch]
        # Open envelopes only of the events some read model of the group reads
        # personal fields of; every read model gets the same event objects.
        opened = frozenset().union(*personal)  # type: ignore[arg-type]
        prefetch = getattr(self.mapper, "prefetch_keys", None)
        if prefetch is not None and opened:
            prefetch([n for n in batch if n.topic in opened])
        return [
            None
            if wanted is not None and n.topic not in wanted
            else decode(n)
            if n.topic in opened
            else sealed(n)
            for n in batch
        ]

    # ---- in-process background runner --------------------------------------
