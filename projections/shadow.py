"""Shadow rebuilds: a read model replayed into new tables (a new generation,
``generations.py``) while the live tables keep serving, then swapped in by
one transaction (see docs/projections.md, "Shadow rebuilds")."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import Any

from sqlalchemy import Connection, Engine, and_, inspect, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from ..domain.errors import ChatLedgerError, ConcurrencyConflictError, ConfigurationError
from .catch_up import CatchUp
from .drivers import PgError
from .failures import failures_table
from .generations import (
    SHADOW_SUFFIX,
    generation_metadata,
    generation_suffix,
    generations_table,
    retired_suffix,
)
from .prefixes import on
from .read_model import ReadModel
from .status import Progress, ProjectionStatus
from .tracking import tracking_table
from .view import SQLView

log = logging.getLogger("chatledger.projections")

SWAP_ATTEMPTS = 60
SWAP_LOCK_TIMEOUT_MS = 2000
"""PostgreSQL: how long a swap waits for a table lock (readers in flight hold
one) before it rolls back and tries again, so new readers never queue behind
it for longer."""


class ShadowRebuilds:
    """Shadow rebuilds of a runner's read models (:meth:`ProjectionRunner.rebuild_shadow`).

    ``live_lock`` is the runner's catch-up lock: the swap holds it, so no
    in-process catch-up of the live models runs while their tables change."""

    def __init__(
        self,
        engine: Engine,
        application_name: str,
        projections: dict[str, ReadModel],
        catch_up: CatchUp,
        *,
        ddl_lock: Callable[[], AbstractContextManager[Any]],
        live_lock: threading.Lock,
    ) -> None:
        self.engine = engine
        self.application_name = application_name
        self.projections = projections
        self.catch_up = catch_up
        self.ddl_lock = ddl_lock
        self.live_lock = live_lock
        self._shadow_lock = threading.Lock()

    def rebuild(
        self,
        names: Sequence[str] | None = None,
        *,
        batch_size: int = 2000,
        progress: Progress | None = None,
    ) -> int:
        """Rebuild read models (default: all) without downtime; return the
        events applied to the shadows (summed over the read models).

        Each is replayed from position 0 into new tables (``<table>__g<N>``,
        tracked as ``<name>__shadow``) while the live tables keep serving reads
        and keep being caught up. Once the shadows are near the head, one
        transaction locks the live models' tracking rows (SQLite: the write
        lock), applies the last events to the shadows, renames the live tables
        away and the shadows' to the canonical names, and moves the tracking
        and failure records: a reader sees the old tables or the new ones.
        The old tables are dropped afterwards. A crash before that commit
        leaves the live tables untouched; a rerun continues the shadow from
        its own position (see docs/projections.md, "Shadow rebuilds").
        """
        projections = [self.projections[n] for n in names or list(self.projections)]
        for projection in projections:
            if not type(projection).__dict__.get("supports_shadow_rebuild", False):
                raise ConfigurationError(
                    f"Read model {projection.name!r} does not declare supports_shadow_rebuild "
                    "(its handlers must write through self.view.table(...)); rebuild it in "
                    "place (without --shadow) instead."
                )
        with self._shadow_lock:
            shadows = [self._open_shadow(p) for p in projections]
            try:
                applied = self.catch_up.run(shadows, batch_size, progress)
                for shadow in shadows:
                    shadow.view.create_indexes()  # the deferred ones
                    shadow.view.analyze()
                applied += self.catch_up.run(shadows, batch_size, None)  # what arrived meanwhile
            except (sa_exc.DBAPIError, PgError) as err:  # e.g. its tables dropped under it
                abandoned = [
                    live.name for live, shadow in zip(projections, shadows)
                    if self.generation_of(live.name) != shadow.view.generation()
                ]  # fmt: skip
                if abandoned:
                    raise ShadowCancelledError(abandoned) from err
                raise
            swapped, retired = self._swap(projections, shadows, batch_size)
            applied += swapped
            lost = sorted({p.name for p in projections} - {live.name for live, _ in retired})
            if lost:
                raise ShadowCancelledError(lost)
            # The old tables, now nobody's: dropped outside the swap (SQLite's
            # secure_delete zeroes their pages, which takes a while).
            quote = self.engine.dialect.identifier_preparer.quote
            for live, generation in retired:
                for table in reversed(live.view.metadata.sorted_tables):
                    with self.engine.begin() as conn:
                        conn.exec_driver_sql(
                            f"DROP TABLE IF EXISTS {quote(table.name + retired_suffix(generation))}"
                        )
        return applied

    def status(self) -> list[ProjectionStatus]:
        """Each shadow rebuild under way (or left by a crash, to be continued):
        named ``<read model>__shadow``, with its position."""
        head = self.catch_up.head()
        g, t = on(self.engine, generations_table).c, on(self.engine, tracking_table).c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(g.projection, t.notification_id)
                .select_from(
                    on(self.engine, generations_table).outerjoin(
                        tracking_table,
                        and_(
                            t.projection == g.projection + SHADOW_SUFFIX,
                            t.application == self.application_name,
                        ),
                    )
                )
                .where(g.shadow.is_not(None))
                .order_by(g.projection)
            ).all()
        return [
            ProjectionStatus(name + SHADOW_SUFFIX, position or 0, head)
            for name, position in rows
            if name in self.projections
        ]

    def _open_shadow(self, live: ReadModel) -> ReadModel:
        """The shadow of ``live``: continued if one was left, else a new generation."""
        name = live.name
        with self.ddl_lock(), self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            row = conn.execute(
                select(on(self.engine, generations_table)).where(on(self.engine, generations_table).c.projection == name)
            ).first()
            if row is not None and row.shadow is not None:
                generation = row.shadow
            else:
                found = self._generations_on_disk(conn, live)
                generation = max([row.generation if row is not None else 0, *found]) + 1
                if row is None:
                    conn.execute(
                        on(self.engine, generations_table).insert().values(projection=name, generation=0, shadow=generation)
                    )
                else:
                    conn.execute(
                        on(self.engine, generations_table).update()
                        .where(on(self.engine, generations_table).c.projection == name)
                        .values(shadow=generation)
                    )
                for table in (on(self.engine, tracking_table), on(self.engine, failures_table)):
                    conn.execute(table.delete().where(table.c.projection == name + SHADOW_SUFFIX))
        self.drop_stale(live, keep=generation)
        metadata, tables = generation_metadata(live.view.metadata, generation, rename_tables=True)
        view = SQLView(self.engine, name + SHADOW_SUFFIX, metadata, tables=tables, generation=generation)
        view.drop_indexes(live.deferred_indexes)  # built once, before the swap
        view.create_indexes(skip=live.deferred_indexes)  # a crash may have left some out
        shadow = type(live)(view)
        return shadow

    def cancel_all(self) -> list[str]:
        """Abandon every shadow under way or left by a crash, and drop every
        table of a generation that is not live; return the read models whose
        shadow was abandoned. An erasure calls this: such tables hold content
        copied before it, which no catch-up reaches (a shadow is only caught up
        by its own rebuild). A shadow build still running elsewhere finds its
        generation gone and swaps nothing (:class:`ShadowCancelledError`)."""
        cancelled = []
        for live in self.projections.values():
            with self.ddl_lock(), self.engine.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                done = conn.execute(
                    on(self.engine, generations_table).update()
                    .where(on(self.engine, generations_table).c.projection == live.name, on(self.engine, generations_table).c.shadow.is_not(None))
                    .values(shadow=None)
                )
                for table in (on(self.engine, tracking_table), on(self.engine, failures_table)):
                    conn.execute(table.delete().where(table.c.projection == live.name + SHADOW_SUFFIX))
            if done.rowcount:
                cancelled.append(live.name)
            self.drop_stale(live, keep=None)
        return cancelled

    def generation_of(self, name: str) -> int | None:
        """The generation a shadow of ``name`` is building, if any."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(on(self.engine, generations_table).c.shadow).where(on(self.engine, generations_table).c.projection == name)
            ).scalar()

    def _generations_on_disk(self, conn: Connection, live: ReadModel) -> list[int]:
        """Generation numbers of ``<table>__g<N>`` tables of ``live`` that exist."""
        names = set(inspect(conn).get_table_names())
        found = []
        for table in live.view.metadata.sorted_tables:
            prefix = table.name + "__g"
            found += [int(n[len(prefix):]) for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]
        return found

    def drop_stale(self, live: ReadModel, *, keep: int | None) -> None:
        """Drop the tables of ``live``'s generations other than the shadow
        ``keep``: old live tables a swap renamed away, a shadow abandoned."""
        with self.engine.begin() as conn:
            stale = sorted(set(self._generations_on_disk(conn, live)) - {keep})
        if not stale:
            return
        quote = self.engine.dialect.identifier_preparer.quote
        for generation in stale:
            for table in reversed(live.view.metadata.sorted_tables):
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"DROP TABLE IF EXISTS {quote(table.name + retired_suffix(generation))}"
                    )  # never the live table: ``__g0`` too has its suffix

    def _swap(
        self, lives: Sequence[ReadModel], shadows: Sequence[ReadModel], batch_size: int
    ) -> tuple[int, list[tuple[ReadModel, int]]]:
        """Final catch-up of the shadows and the swap, in one transaction
        (retried while a lock is not granted in time)."""
        delay = 0.05
        for attempt in range(SWAP_ATTEMPTS):
            try:
                with self.ddl_lock(), self.live_lock:
                    return self._swap_once(lives, shadows, batch_size)
            except sa_exc.OperationalError as err:
                if not _is_lock_error(err) or attempt == SWAP_ATTEMPTS - 1:
                    raise
                log.warning("shadow swap of %s waited too long for a lock; retrying",
                            ", ".join(p.name for p in lives))  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _swap_once(
        self, lives: Sequence[ReadModel], shadows: Sequence[ReadModel], batch_size: int
    ) -> tuple[int, list[tuple[ReadModel, int]]]:
        app = self.application_name
        quote = self.engine.dialect.identifier_preparer.quote
        with self.engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT_MS}ms'")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # no writer until the swap commits
            names = [p.name for p in lives]
            query = select(on(self.engine, generations_table)).where(on(self.engine, generations_table).c.projection.in_(names))
            rows = {r.projection: r for r in conn.execute(query.with_for_update() if postgres else query)}
            pairs = [
                (live, shadow)
                for live, shadow in zip(lives, shadows)
                if (row := rows.get(live.name)) is not None and row.shadow == shadow.view.generation()
            ]  # another runner may have swapped one already
            if not pairs:
                return 0, []
            # Freeze the live models: their runners wait on these rows.
            for live, _ in pairs:
                where = and_(on(self.engine, tracking_table).c.projection == live.name, on(self.engine, tracking_table).c.application == app)
                locked = select(on(self.engine, tracking_table).c.notification_id).where(where)
                if conn.execute(locked.with_for_update() if postgres else locked).first() is None:
                    insert = (postgresql.insert if postgres else sqlite.insert)(on(self.engine, tracking_table))
                    conn.execute(
                        insert.values(projection=live.name, application=app, notification_id=0)
                        .on_conflict_do_nothing()
                    )
                    if postgres:
                        conn.execute(locked.with_for_update())
            live_positions = {
                live.name: conn.execute(
                    select(on(self.engine, tracking_table).c.notification_id).where(
                        on(self.engine, tracking_table).c.projection == live.name, on(self.engine, tracking_table).c.application == app
                    )
                ).scalar() or 0
                for live, _ in pairs
            }
            with ExitStack() as stack:
                for _, shadow in pairs:
                    stack.enter_context(shadow.view.join(conn))
                group = [shadow for _, shadow in pairs]
                positions = {s.name: s.view.max_tracking_id(app) or 0 for s in group}
                applied = self.catch_up.apply(group, batch_size, None, self.catch_up.head(), positions, bulk=False)
                final = {s.name: s.view.max_tracking_id(app) or 0 for s in group}
            for live, shadow in pairs:
                if final[shadow.name] < live_positions[live.name]:  # pragma: no cover - head only grows
                    raise RuntimeError(f"shadow of {live.name!r} is behind the live model")
                old = rows[live.name].generation
                generation = shadow.view.generation()
                for table in live.view.metadata.sorted_tables:
                    conn.exec_driver_sql(
                        f"ALTER TABLE {quote(table.name)} RENAME TO "
                        f"{quote(table.name + retired_suffix(old))}"
                    )
                    conn.exec_driver_sql(
                        f"ALTER TABLE {quote(table.name + generation_suffix(generation))} "
                        f"RENAME TO {quote(table.name)}"
                    )
                shadow_name = live.name + SHADOW_SUFFIX
                for table in (on(self.engine, tracking_table), on(self.engine, failures_table)):
                    conn.execute(table.delete().where(table.c.projection == live.name))
                    conn.execute(
                        table.update().where(table.c.projection == shadow_name).values(projection=live.name)
                    )
                conn.execute(
                    on(self.engine, generations_table).update()
                    .where(on(self.engine, generations_table).c.projection == live.name)
                    .values(generation=generation, shadow=None)
                )
        return applied, [(live, rows[live.name].generation) for live, _ in pairs]



class ShadowCancelledError(ConcurrencyConflictError):
    """A shadow rebuild's generation was abandoned while it ran (an erasure
    drops unfinished shadows, or another rebuild swapped it first): nothing
    was swapped by this run. Run the rebuild again."""

    def __init__(self, names: Sequence[str]) -> None:
        ChatLedgerError.__init__(
            self,
            f"The shadow rebuild of {', '.join(names)} was abandoned while it ran (an erasure "
            "drops unfinished shadows, or another rebuild swapped it first); the live read "
            "model is untouched. Run the rebuild again.",
        )
        self.names = list(names)
        self.attempts = 1


def _is_lock_error(error: sa_exc.OperationalError) -> bool:
    """A lock not granted in time: PostgreSQL's ``lock_not_available``, SQLite's busy."""
    cause = error.orig
    if isinstance(cause, PgError):
        return cause.sqlstate in ("55P03", "40P01")
    return "locked" in str(cause)
