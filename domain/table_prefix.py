"""Table prefixes: the names of every table, index, function and channel of one ledger.

Two ledgers can share one PostgreSQL schema (or one SQLite file) when they have
different prefixes (``Settings.table_prefix``, ``CHATLEDGER_TABLE_PREFIX``). The
default, ``chatledger_``, keeps the names a store has always had: chatledger's
own tables ``chatledger_*``, the event store's ``chatledger_events`` /
``chatledger_snapshots`` (PostgreSQL) or ``stored_events`` /
``stored_snapshots`` (SQLite), and the read models' unprefixed
``analytics_sessions``, ``conversation_messages``, ...

Any other prefix, say ``bot2_``, names everything after it: ``chatledger_keys``
becomes ``bot2_keys``, ``analytics_sessions`` ``bot2_analytics_sessions``, the
events table ``bot2_events``, an index ``ix_analytics_...`` ``ix_bot2_analytics_...``,
the PostgreSQL insert function ``bot2_insert_events_v1``; eventsourcing's
LISTEN/NOTIFY channel is named after the events table, so it differs too.
"""

from __future__ import annotations

import re

from .errors import ConfigurationError

DEFAULT_PREFIX = "chatledger_"
PREFIX_OPTION = "chatledger_table_prefix"
"""The SQLAlchemy execution option a ledger's engine carries its prefix in (when not the default)."""
MAX_PREFIX_CHARS = 14
"""The longest prefix: with it the longest name chatledger makes (an index of a
shadow rebuild's generation, ``ix_<prefix>conversation_messages_tenant_visitor_at__g<N>``, N < 10000)
stays within PostgreSQL's 63-byte identifiers (tests/test_table_prefix.py checks
every name)."""

_PATTERN = re.compile(r"[a-z][a-z0-9_]*_\Z")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can name tables, else a :class:`ConfigurationError`: lower-case
    letters, digits and underscores, starting with a letter and ending with ``_``, at
    most :data:`MAX_PREFIX_CHARS` characters."""
    if not isinstance(prefix, str) or not _PATTERN.match(prefix) or len(prefix) > MAX_PREFIX_CHARS:
        shown = repr(prefix) if len(repr(prefix)) <= 40 else repr(prefix)[:37] + "..."
        raise ConfigurationError(
            f"table_prefix (CHATLEDGER_TABLE_PREFIX) {shown} cannot name tables: use lower-case "
            f"letters, digits and '_', starting with a letter and ending with '_', at most "
            f"{MAX_PREFIX_CHARS} characters (PostgreSQL names are at most 63 bytes), e.g. 'bot2_'."
        )
    return prefix


def table_name(prefix: str, name: str) -> str:
    """The name ``name`` (as the default prefix has it) takes under ``prefix``."""
    if prefix == DEFAULT_PREFIX:
        return name
    if name.startswith("ix_"):
        return "ix_" + table_name(prefix, name[3:])
    if name.startswith(DEFAULT_PREFIX):
        return prefix + name[len(DEFAULT_PREFIX):]
    return prefix + name


def event_table_name(prefix: str, purpose: str, default: str) -> str:
    """The event store's table for ``purpose`` (``events``/``snapshots``): eventsourcing's
    own ``default`` under the default prefix, else ``<prefix><purpose>``."""
    return default if prefix == DEFAULT_PREFIX else prefix + purpose
