"""Background jobs on APScheduler 3: one sweep job for all sessions (and retention).

No per-session timers: one interval job finds every due session with one
indexed query, so memory does not grow with the number of sessions. Jobs have
explicit ids, ``max_instances=1`` (a slow sweep is never run twice at once)
and ``coalesce=True`` (runs missed while the process was busy or asleep
collapse into one). The first sweep runs as soon as the scheduler starts, so a
worker that was down catches up at once; the sweep is idempotent, so that
catch-up never does anything twice.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

# APScheduler 3 ships no type hints (no py.typed): BackgroundScheduler is Any to mypy.
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]

from ..domain.errors import InvalidCommandError
from .settings import Settings

if TYPE_CHECKING:
    from datetime import timedelta
    from pathlib import Path


class Housekeeper(Protocol):
    """What the jobs call (the facade, ``ChatLedger``, is one): infrastructure never imports the
    application layer, the application hands itself in."""

    def sweep(self, *, all_tenants: bool = ...) -> Any: ...

    def archive_closed_sessions(self, older_than: Any, archive_dir: Any, /, *, all_tenants: bool = ...) -> Any: ...

    def catch_up(self) -> int: ...

    def seal(self) -> Any: ...

    @property
    def settings(self) -> Settings: ...


class RetentionSchedule(Protocol):
    """The parts of a retention policy the job reads (``RetentionPolicy`` is one)."""

    @property
    def interval(self) -> timedelta: ...

    @property
    def archive_after(self) -> timedelta: ...

    @property
    def archive_dir(self) -> Path | str: ...

logger = logging.getLogger("chatledger.scheduler")

SWEEP_JOB_ID = "chatledger.sweep"
SEAL_JOB_ID = "chatledger.seal"
RETENTION_JOB_ID = "chatledger.retention"
PROJECTIONS_JOB_ID = "chatledger.projections"


class BackgroundJobs:
    """The ledger's scheduled jobs, in a daemon thread of this process."""

    def __init__(
        self,
        ledger: Housekeeper,
        *,
        interval: float = 30.0,
        retention: RetentionSchedule | None = None,
        projections_interval: float | None = None,
    ) -> None:
        for name, value in (("interval", interval), ("projections_interval", projections_interval)):
            if value is not None and not value > 0:
                raise InvalidCommandError(
                    f"{name}={value!r} must be a positive number of seconds."
                )
        self.ledger = ledger
        self.projections_interval = projections_interval
        self.interval = float(interval)
        self.seal_interval = float(ledger.settings.seal_interval_s)
        self.retention = retention
        self.scheduler = BackgroundScheduler(timezone=UTC)

    def start(self) -> None:
        now = datetime.now(UTC)

        def every(seconds: float, job_id: str, name: str, func: Any, *args: Any) -> None:
            # One instance at a time; runs missed while down collapse into one,
            # and the first run is now, so a restarted worker catches up at once.
            self.scheduler.add_job(
                func,
                "interval",
                args=args,
                seconds=seconds,
                id=job_id,
                name=name,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=now,
            )

        # The store's jobs: every tenant's sessions (each by the policy it started under).
        sweep_all = functools.partial(self.ledger.sweep, all_tenants=True)
        every(self.interval, SWEEP_JOB_ID, "time out idle sessions", sweep_all)
        every(self.seal_interval, SEAL_JOB_ID, "seal the committed log", self.ledger.seal)
        if self.projections_interval is not None:
            every(
                self.projections_interval,
                PROJECTIONS_JOB_ID,
                "catch the read models up with the log",
                self.catch_up_projections,
            )
        if self.retention is not None:
            policy = self.retention
            every(
                policy.interval.total_seconds(),
                RETENTION_JOB_ID,
                "archive long-closed sessions",
                functools.partial(self.ledger.archive_closed_sessions, all_tenants=True),
                policy.archive_after,
                policy.archive_dir,
            )
        self.scheduler.start()
        logger.info(
            "background jobs started: sweep every %.0f s%s",
            self.interval,
            f", retention after {self.retention.archive_after}" if self.retention else "",
        )

    def catch_up_projections(self) -> int:
        """One catch-up of every read model; logs what it applied and how long it took."""
        started = time.monotonic()
        applied = self.ledger.catch_up()
        if applied:
            logger.info(
                "projections: applied %d events in %.3f s", applied, time.monotonic() - started
            )
        return applied

    def stop(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
            logger.info("background jobs stopped")

    @property
    def job_ids(self) -> list[str]:
        return [job.id for job in self.scheduler.get_jobs()]
