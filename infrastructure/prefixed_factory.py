"""eventsourcing's factories, naming the event store's tables after the ledger's table prefix.

eventsourcing names them after the application (``chatledger_events``) or fixed
names (SQLite's ``stored_events``); under another prefix than the default (see
``domain/table_prefix.py``) the factory passes ``<prefix>events`` /
``<prefix>snapshots`` as the recorders' ``events_table_name`` (their public
constructor argument) and the prefix to the ledger recorder, which names its own
tables (hashes, keys, seals) and PostgreSQL insert function after it.
eventsourcing's LISTEN/NOTIFY channel is the events table's name, so it differs too.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.utils import resolve_topic

from ..domain.table_prefix import DEFAULT_PREFIX, check_prefix, event_table_name
from .recording import LedgerTableNames

PREFIX_ENV = "CHATLEDGER_TABLE_PREFIX"
"""The eventsourcing environment's key for the table prefix (set from ``Settings``)."""


class PrefixedFactory:
    """A mixin of the ledger's eventsourcing factories (before the library's factory)."""

    def table_prefix(self) -> str:
        me: Any = self
        return check_prefix(me.env.get(PREFIX_ENV) or DEFAULT_PREFIX)

    def aggregate_recorder(self, purpose: str = "events") -> Any:
        me: Any = self
        prefix = self.table_prefix()
        if prefix == DEFAULT_PREFIX:
            recorder = super().aggregate_recorder(purpose)  # type: ignore[misc]
        else:
            name = event_table_name(prefix, purpose, purpose)
            recorder = type(me).aggregate_recorder_class(datastore=me.datastore, events_table_name=name)
            if me.env_create_table():
                recorder.create_table()
        if isinstance(recorder, LedgerTableNames):
            recorder.name_tables(prefix)
        return recorder

    def application_recorder(self) -> Any:
        me: Any = self
        prefix = self.table_prefix()
        if prefix == DEFAULT_PREFIX:
            return super().application_recorder()  # type: ignore[misc]
        topic = me.env.get(me.APPLICATION_RECORDER_TOPIC)
        cls = resolve_topic(topic) if topic else type(me).application_recorder_class
        recorder = cls(datastore=me.datastore, events_table_name=prefix + "events", table_prefix=prefix)
        if me.env_create_table():
            recorder.create_table()
        return recorder
