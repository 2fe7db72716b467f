"""The PostgreSQL driver's exceptions, for the read models' error handling.

psycopg comes with the ``postgres`` extra; without it no psycopg error can be raised, and these
names stand for exception classes nothing raises.
"""

from __future__ import annotations

try:
    from psycopg import DataError as PgDataError
    from psycopg import Error as PgError
    from psycopg import IntegrityError as PgIntegrityError
except ImportError:  # a SQLite-only install (no [postgres] extra)

    class PgError(Exception):  # type: ignore[no-redef]
        """Never raised: stands for ``psycopg.Error``."""

    class PgDataError(PgError):  # type: ignore[no-redef]
        """Never raised: stands for ``psycopg.DataError``."""

    class PgIntegrityError(PgError):  # type: ignore[no-redef]
        """Never raised: stands for ``psycopg.IntegrityError``."""


__all__ = ["PgDataError", "PgError", "PgIntegrityError"]
