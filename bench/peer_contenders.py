"""The contenders of bench/peers.py, each writing the same messages its own documented way.

* ``chatledger``: ``ledger.receive(visitor, text)`` for a user message, ``ledger.reply(id, text)``
  for the bot's; each its own durable command.
* ``raw``: plain ``sqlite3`` / ``psycopg``: one ``INSERT`` + ``COMMIT`` per message into a
  ``messages`` table (conversation, seq, role, body, at), the physical floor of the same work.
  SQLite: WAL, ``synchronous=FULL``, one writer at a time in the process (a lock, as
  eventsourcing's pool has). PostgreSQL: an autocommit connection per writer.
* ``eventsourcing``: the library's own ``Application`` + ``Aggregate`` with ``@event`` methods,
  the documented way (``repository.get`` then ``save`` per message), its aggregate cache on
  (``AGGREGATE_CACHE_MAXSIZE``, as chatledger has one), no snapshots; a file / schema of its own.
* ``agents``: the OpenAI Agents SDK's ``SQLiteSession.add_items`` (SQLite only; its defaults:
  WAL, sqlite's default ``synchronous=FULL``), one event loop per writer thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any
from uuid import UUID

import psycopg
from chatledger import ChatLedger
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from psycopg import sql

from peer_common import BOT_TEXT, PG_BASE, PG_CONNINFO, PG_ENV, USER_TEXT, Writer, text_of

RAW_DDL = (
    "CREATE TABLE IF NOT EXISTS messages (conversation TEXT NOT NULL, seq INTEGER NOT NULL, "
    "role TEXT NOT NULL, body TEXT NOT NULL, at {ts} NOT NULL, PRIMARY KEY (conversation, seq))"
)


# ---------------------------------------------------------------------------- chatledger


class ChatLedgerContender:
    name = "chatledger"

    def __init__(self, url: str, **settings: Any) -> None:
        self.ledger = ChatLedger.open(url, **settings)

    def writer(self, conversation: str) -> Writer:
        ledger, state = self.ledger, {}

        def write(k: int) -> None:
            if k % 2 == 0:
                state["sid"] = ledger.receive(conversation, USER_TEXT).session_id
            else:
                ledger.reply(state["sid"], BOT_TEXT)

        return write

    def close(self) -> None:
        self.ledger.close()


# ---------------------------------------------------------------------------- raw


class RawSQLite:
    name = "raw"

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conns: list[sqlite3.Connection] = []
        self.connect().execute(RAW_DDL.format(ts="REAL"))

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self.conns.append(conn)
        return conn

    def writer(self, conversation: str) -> Writer:
        conn, lock = self.connect(), self.lock
        insert = "INSERT INTO messages VALUES (?, ?, ?, ?, julianday('now'))"

        def write(k: int) -> None:
            role, text = text_of(k)
            with lock:
                conn.execute("BEGIN")
                conn.execute(insert, (conversation, k, role, text))
                conn.execute("COMMIT")

        return write

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


class RawPsycopg:
    name = "raw"

    def __init__(self, schema: str) -> None:
        self.table = sql.Identifier(schema, "messages")
        self.conns: list[psycopg.Connection[Any]] = []
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            ddl = RAW_DDL.format(ts="timestamptz").replace("messages", "{}")
            conn.execute(sql.SQL(ddl).format(self.table))  # type: ignore[arg-type]

    def writer(self, conversation: str) -> Writer:
        conn = psycopg.connect(PG_CONNINFO, autocommit=True)
        self.conns.append(conn)
        insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, now())").format(self.table)

        def write(k: int) -> None:
            role, text = text_of(k)
            conn.execute(insert, (conversation, k, role, text), prepare=True)  # autocommit: one COMMIT

        return write

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


# ---------------------------------------------------------------------------- eventsourcing


class Conversation(Aggregate):
    @event("Started")
    def __init__(self, visitor: str) -> None:
        self.visitor = visitor
        self.messages: list[tuple[str, str]] = []

    @event("MessageAdded")
    def add_message(self, role: str, text: str) -> None:
        self.messages.append((role, text))


class Conversations(Application[UUID]):
    """A conversation store written the way eventsourcing's documentation writes one."""

    def start(self, visitor: str, role: str, text: str) -> UUID:
        conversation = Conversation(visitor)
        conversation.add_message(role, text)
        self.save(conversation)
        return conversation.id

    def add(self, conversation_id: UUID, role: str, text: str) -> None:
        conversation: Conversation = self.repository.get(conversation_id)
        conversation.add_message(role, text)
        self.save(conversation)

    def messages(self, conversation_id: UUID) -> list[tuple[str, str]]:
        conversation: Conversation = self.repository.get(conversation_id)
        return conversation.messages


def eventsourcing_env(where: str, cache: bool = True, create: bool = True) -> dict[str, str]:
    """eventsourcing's settings for a SQLite file (a path) or a PostgreSQL schema (``pg:NAME``)."""
    if where.startswith("pg:"):
        env = dict(PG_ENV, POSTGRES_SCHEMA=where[3:])
    else:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": where}
    if cache:
        env["AGGREGATE_CACHE_MAXSIZE"] = "10000"
    if not create:  # the tables exist: writer processes must not race on CREATE OR REPLACE
        env["CREATE_TABLE"] = "false"
    return env


class EventsourcingContender:
    name = "eventsourcing"

    def __init__(self, where: str, create: bool = True) -> None:
        if create and where.startswith("pg:"):
            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(where[3:])))
        self.app = Conversations(env=eventsourcing_env(where, create=create))

    def writer(self, conversation: str) -> Writer:
        app, state = self.app, {}

        def write(k: int) -> None:
            role, text = text_of(k)
            if "id" not in state:
                state["id"] = app.start(conversation, role, text)
            else:
                app.add(state["id"], role, text)

        return write

    def close(self) -> None:
        self.app.close()


# ---------------------------------------------------------------------------- OpenAI Agents SDK


class AgentsContender:
    name = "agents"

    def __init__(self, path: str) -> None:
        from agents import SQLiteSession  # the [bench] extra

        self.session_class = SQLiteSession
        self.path = path
        self.sessions: list[Any] = []
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.local = threading.local()

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = getattr(self.local, "loop", None)
        if loop is None:
            loop = self.local.loop = asyncio.new_event_loop()
            self.loops.append(loop)
        return loop

    def writer(self, conversation: str) -> Writer:
        session = self.session_class(conversation, self.path)
        self.sessions.append(session)

        def write(k: int) -> None:
            role, text = text_of(k)
            item = {"role": "user" if role == "user" else "assistant", "content": text}
            self.loop().run_until_complete(session.add_items([item]))

        return write

    def close(self) -> None:
        for session in self.sessions:
            session.close()
        for loop in self.loops:
            loop.close()


def chatledger_url(where: str) -> str:
    return f"{PG_BASE}?schema={where[3:]}" if where.startswith("pg:") else f"sqlite:///{where}"


def make(name: str, where: str, create: bool = True) -> Any:
    """The contender ``name`` on ``where``: a SQLite path, or ``pg:SCHEMA`` (``create=False``:
    its tables exist already)."""
    pg = where.startswith("pg:")
    if name == "chatledger":
        return ChatLedgerContender(chatledger_url(where))
    if name == "raw":
        return RawPsycopg(where[3:]) if pg else RawSQLite(where)
    if name == "eventsourcing":
        return EventsourcingContender(where, create)
    if name == "agents":
        if pg:
            raise ValueError("SQLiteSession is SQLite only")
        return AgentsContender(where)
    raise ValueError(name)
