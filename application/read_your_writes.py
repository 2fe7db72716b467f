"""Read your writes: wait until the read models have applied a log position.

A command's position (``turn.position``, ``ledger.written_position()`` in the
thread that ran it, or ``ledger.log_position()`` for every write so far) passed
as ``after=`` to ``transcript``/``analytics``/``memory`` (or to
``ledger.wait_for``) makes the query wait until every read model has applied
the log up to it. The waiting query catches the read models up itself (the
same work a background runner does, under the same lock, so the two never
apply an event twice), and polls only while the position is not visible yet
(a write of another process still committing); after ``timeout`` (default
``read_wait_timeout_s``, 5 s) it raises :class:`ReadTimeoutError` and reads
nothing.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from ..domain import validation as v
from ..domain.errors import InvalidValueError, ReadTimeoutError

UnitOfWork = Any  # the unit of work (which calls this module: not imported, no cycle)

POLL_S = 0.02
T = TypeVar("T")


def checked_position(name: str, value: Any) -> int:
    """``value`` as a log position (an int, 0 or more), else :class:`InvalidValueError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(name, "type", f"{name} must be an int (a log position), not {type(value).__name__}.")
    if not 0 <= value < v.INT_BOUND:
        raise InvalidValueError(name, "position_range", f"{name}={value} must be a log position: 0 or more, below 2**63.")
    return value


def reached(uow: UnitOfWork) -> int:
    """The lowest position any read model has applied."""
    projector = uow.projector
    return min((projector.position(name) for name in projector.projections), default=0)


def wait_for(uow: UnitOfWork, position: int, timeout: float | None = None) -> int:
    """Block until every read model has applied ``position``; the position reached."""
    if not uow.read_models or position <= 0:
        return reached(uow) if uow.read_models else 0
    now = reached(uow)
    if now >= position:
        return now
    limit = uow.settings.read_wait_timeout_s if timeout is None else timeout
    deadline = time.monotonic() + limit
    while True:
        uow.projector.catch_up()
        now = reached(uow)
        if now >= position:
            return now
        if time.monotonic() >= deadline:
            raise ReadTimeoutError(position, now, limit)
        time.sleep(POLL_S)


class ReadYourWrites:
    """The read-your-writes methods of the unit of work (a base of it; ``self`` is one)."""

    _written: Any  # threading.local; .position: the last event this thread's last save wrote

    def set_written_position(self, position: int) -> None:
        """What :meth:`written_position` returns in this thread from now on."""
        self._written.position = position

    def log_position(self) -> int:
        """The position of the newest event of the log (0: empty): a token for
        ``after=`` covering every write committed so far, by anyone."""
        uow: Any = self
        return int(uow.recorder.max_notification_id() or 0)

    def wait_for(self, position: int, *, timeout: float | None = None) -> int:
        """Block until every read model has applied log ``position`` (``turn.position``,
        ``written_position()``, ``log_position()``), catching them up; :class:`ReadTimeoutError`
        after ``timeout`` (default ``read_wait_timeout_s``). The position reached."""
        return wait_for(self, checked_position("position", position), timeout)

    def waited(self: T, after: int | None) -> T:
        """``self``, once the read models have applied ``after`` (None: at once)."""
        if after is not None:
            wait_for(self, checked_position("after", after))
        return self

    def written_position(self) -> int:
        """The log position of the last event this thread's last command wrote
        (0 if it wrote none yet): a token for ``after=`` (read your writes)."""
        return int(getattr(self._written, "position", 0))


__all__ = ["ReadYourWrites", "checked_position", "reached", "wait_for"]
