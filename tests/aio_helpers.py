"""Test support for the async facade: which thread makes each database call.

:func:`database_threads` records the thread of every call into the database drivers while its
block runs, in every thread: a SQLite statement, commit or rollback (the ``sqlite3`` module's
C methods, used by eventsourcing's recorder and by SQLAlchemy's read models), and every
PostgreSQL round trip (psycopg's ``Connection.wait``, through which each query, commit and
rollback of a synchronous connection waits for the server). It is a profiler hook: the drivers
themselves run as they always do.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SQLITE_CALLS = frozenset(
    {"execute", "executemany", "executescript", "commit", "rollback", "fetchone", "fetchall", "fetchmany"}
)


@contextmanager
def database_threads() -> Iterator[Counter[int]]:
    """``with database_threads() as seen:``: ``seen[thread_ident]`` counts the database calls
    each thread made while the block ran (threads started inside the block included)."""
    seen: Counter[int] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            if type(owner).__module__ == "sqlite3" and getattr(arg, "__name__", "") in SQLITE_CALLS:
                seen[threading.get_ident()] += 1
        elif event == "call" and frame.f_code.co_name == "wait":
            if frame.f_globals.get("__name__") == "psycopg.connection":
                seen[threading.get_ident()] += 1

    everywhere = getattr(threading, "setprofile_all_threads", None)  # Python 3.12+
    if everywhere is not None:
        everywhere(profile)
    else:
        threading.setprofile(profile)
        sys.setprofile(profile)
    try:
        yield seen
    finally:
        if everywhere is not None:
            threading.setprofile_all_threads(None)  # type: ignore[attr-defined]
        else:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
