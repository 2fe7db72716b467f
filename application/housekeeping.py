"""The housekeeping part of the :class:`~chatledger.ChatLedger` facade: the sweep, retention
archives and the background jobs that run them (see :mod:`.sweeper`, :mod:`.retention` and
:mod:`chatledger.infrastructure.scheduler`). Each method checks its arguments and delegates."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from ..infrastructure.scheduler import BackgroundJobs
from . import bootstrap
from .arguments import COUNT, DURATION, TIME, checked, interval_arg, opt, path_arg, retention_arg
from .backups import BackupManifest, create_backup
from .key_management import KeyRotation, rotate_keys
from .retention import (
    ArchivedSession,
    ArchiveResult,
    RetentionPolicy,
    archive_closed_sessions,
    read_archive,
)
from .sweeper import sweep as sweep_due
from .unit_of_work import UnitOfWork


class Housekeeping(UnitOfWork):
    """Sweep, archive and background jobs of the ledger (see the module docstring)."""

    _jobs: BackgroundJobs | None = None  # while started

    def close(self) -> None:
        if not self.closing.is_set():
            self.stop_background_jobs()
            super().close()

    @checked(now=opt(TIME), limit=opt(COUNT), batch_size=COUNT)
    def sweep(self, now: datetime | None = None, *, limit: int | None = None, batch_size: int = 5000) -> int:
        """Time out every session idle past its deadline at ``now``; return how many.

        Each timed-out event is stamped with the moment the session went idle,
        and is appended exactly once however many sweepers (threads, processes,
        servers) and lazy checks race. See ``docs/timeouts.md``.
        """
        return sweep_due(self, now, limit=limit, batch_size=batch_size).timed_out

    @checked(older_than=DURATION, archive_dir=path_arg, now=opt(TIME))
    def archive_closed_sessions(
        self, older_than: timedelta, archive_dir: str | os.PathLike[str], *, now: datetime | None = None
    ) -> ArchiveResult:
        """Archive sessions closed before ``now - older_than`` to a gzipped JSONL
        file and drop their read-model rows. The event log is not touched."""
        return archive_closed_sessions(self, older_than, archive_dir, now=now)

    @checked(path=path_arg)
    def read_archive(self, path: str | os.PathLike[str]) -> list[ArchivedSession]:
        """The sessions of a retention archive file, decrypted with the keys still
        in the store (an erased visitor's sessions read as ``"[erased]"``)."""
        return read_archive(self, path)

    @checked(destination=path_arg)
    def backup(self, destination: str | os.PathLike[str]) -> BackupManifest:
        """Seal, copy the store online into the new folder ``destination`` and write its
        manifest (the copy's anchor, files and digests); see :mod:`~chatledger.application.backups`."""
        return create_backup(self, destination)

    def rotate_keys(self) -> KeyRotation:
        """Re-wrap every content key under the current master key (events untouched);
        see :mod:`~chatledger.application.key_management`."""
        return rotate_keys(self)

    @checked(interval=interval_arg, retention=retention_arg, projections_interval=opt(interval_arg))
    def start_background_jobs(
        self, interval: float = 30.0, *, retention: RetentionPolicy | None = None,
        projections_interval: float | None = 5.0,
    ) -> BackgroundJobs:
        """Run the sweep, the projections catch-up (unless ``projections_interval``
        is None) and the retention job (if given) in a background scheduler
        thread until :meth:`stop_background_jobs` or :meth:`close`."""
        if self._jobs is None:
            self._jobs = bootstrap.start_jobs(self, interval, retention, projections_interval)
        return self._jobs

    def stop_background_jobs(self) -> None:
        jobs, self._jobs = getattr(self, "_jobs", None), None
        if jobs is not None:
            jobs.stop()

    @contextmanager
    def background_jobs(
        self, interval: float = 30.0, *, retention: RetentionPolicy | None = None,
        projections_interval: float | None = 5.0,
    ) -> Iterator[BackgroundJobs]:
        """``with ledger.background_jobs(): serve()``: jobs run while the block runs."""
        jobs = self.start_background_jobs(
            interval, retention=retention, projections_interval=projections_interval
        )
        try:
            yield jobs
        finally:
            self.stop_background_jobs()


__all__ = ["Housekeeping"]
