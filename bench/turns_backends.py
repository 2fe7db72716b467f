"""The databases of bench/turns.py: where the ledger lives and where the raw baseline
writes (the same rows, one commit per message), plus the small helpers of its figures."""


from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from chatledger import ChatLedger
from psycopg import sql

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
MESSAGE_TOPICS = ("Session.MessageReceived", "Session.MessageSent")

USER_TEXT = "Hi, I ordered a blue jacket last week and it has not arrived yet. Where is it?"
BOT_TEXT = "Sorry about that! Let me check order A-17 for you: it left the warehouse yesterday."


# ---------------------------------------------------------------------------- helpers


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


@dataclass
class WriteResult:
    label: str
    turns: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.seconds if self.seconds else float("nan")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "turns": self.turns,
            "seconds": round(self.seconds, 3),
            "turns_per_s": round(self.turns_per_s, 1),
        }
        for name, values in self.latencies.items():
            out[f"{name}_p50_ms"] = round(pct(values, 0.50) * 1000, 3)
            out[f"{name}_p99_ms"] = round(pct(values, 0.99) * 1000, 3)
        out.update(self.extra)
        return out


class Backend:
    """One database: where the ledger lives and where the raw baseline writes."""

    name: str

    def ledger_url(self) -> str: ...
    def raw_setup(self) -> None: ...
    def message_rows(self, session_ids: Sequence[UUID]) -> dict[UUID, list[tuple[Any, ...]]]: ...
    def raw_writer(self) -> Callable[[tuple[Any, ...]], None]: ...
    def raw_close_writer(self, writer: Callable[[tuple[Any, ...]], None]) -> None: ...
    def raw_select(self, session_id: UUID) -> int: ...
    def raw_select_rows(self, session_id: UUID) -> list[tuple[Any, ...]]: ...
    def durability(self, ledger: ChatLedger) -> str: ...
    def cleanup(self) -> None: ...


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, workdir: str, tag: str) -> None:
        self.dir = os.path.join(workdir, f"sqlite-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "ledger.db")
        self.raw_path = os.path.join(self.dir, "raw.db")
        self._write_lock = threading.Lock()

    def ledger_url(self) -> str:
        return f"sqlite:///{self.path}"

    def raw_setup(self) -> None:
        # Let eventsourcing create the raw database, so the table is identical.
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.raw_path + suffix)
        ChatLedger.open(f"sqlite:///{self.raw_path}").close()

    def _connect(self, path: str) -> sqlite3.Connection:
        # Exactly how eventsourcing's SQLiteConnectionPool connects: autocommit
        # mode with explicit BEGIN, WAL journal, default synchronous (FULL).
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=True, timeout=30
        )
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def message_rows(self, session_ids: Sequence[UUID]) -> dict[UUID, list[tuple[Any, ...]]]:
        conn = self._connect(self.path)
        rows: dict[UUID, list[tuple[Any, ...]]] = {sid: [] for sid in session_ids}
        for row in conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM stored_events ORDER BY rowid"
        ):
            sid = UUID(row[0])
            if sid in rows and row[2].endswith(MESSAGE_TOPICS):
                rows[sid].append(tuple(row))
        conn.close()
        return rows

    def raw_writer(self) -> Callable[[tuple[Any, ...]], None]:
        conn = self._connect(self.raw_path)
        lock = self._write_lock

        def write(row: tuple[Any, ...]) -> None:
            # eventsourcing lets one connection of the process write at a time
            # (its pool's writer lock); the baseline does the same.
            with lock:
                conn.execute("BEGIN")
                cur = conn.execute("INSERT INTO stored_events VALUES (?,?,?,?)", row)
                cur.lastrowid  # noqa: B018 - the recorder reads it too
                conn.execute("COMMIT")

        write.conn = conn  # type: ignore[attr-defined]
        return write

    def raw_close_writer(self, writer: Callable[[tuple[Any, ...]], None]) -> None:
        writer.conn.close()  # type: ignore[attr-defined]

    def raw_select_rows(self, session_id: UUID) -> list[tuple[Any, ...]]:
        if not hasattr(self, "_reader"):
            self._reader = self._connect(self.path)
        return self._reader.execute(
            "SELECT originator_id, originator_version, topic, state FROM stored_events "
            "WHERE originator_id=? ORDER BY originator_version ASC",
            (session_id.hex,),
        ).fetchall()

    def raw_select(self, session_id: UUID) -> int:
        return len(self.raw_select_rows(session_id))

    def durability(self, ledger: ChatLedger) -> str:
        datastore = ledger.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as cur:
            cur.execute("PRAGMA journal_mode")
            journal = cur.fetchone()[0]
            cur.execute("PRAGMA synchronous")
            sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[cur.fetchone()[0]]
        return f"journal_mode={journal}, synchronous={sync} (eventsourcing's connection; baseline the same)"

    def cleanup(self) -> None:
        if hasattr(self, "_reader"):
            self._reader.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, tag: str) -> None:
        self.schema = f"bench_turns_{tag}"
        self.raw_schema = f"bench_turns_{tag}_raw"
        self.table = "chatledger_events"
        self._reader: psycopg.Connection[Any] | None = None

    def ledger_url(self) -> str:
        return f"{PG_BASE}?schema={self.schema}"

    def raw_setup(self) -> None:
        self._drop(self.raw_schema)
        # eventsourcing creates the raw schema's table, so it is identical
        # (bigserial notification_id, unique index, primary key).
        ChatLedger.open(f"{PG_BASE}?schema={self.raw_schema}").close()

    def message_rows(self, session_ids: Sequence[UUID]) -> dict[UUID, list[tuple[Any, ...]]]:
        rows: dict[UUID, list[tuple[Any, ...]]] = {sid: [] for sid in session_ids}
        with psycopg.connect(PG_CONNINFO) as conn:
            cur = conn.execute(
                sql.SQL(
                    "SELECT originator_id, originator_version, topic, state FROM {}.{} "
                    "ORDER BY notification_id"
                ).format(sql.Identifier(self.schema), sql.Identifier(self.table))
            )
            for row in cur:
                if row[0] in rows and row[2].endswith(MESSAGE_TOPICS):
                    rows[row[0]].append(tuple(row))
        return rows

    def raw_writer(self) -> Callable[[tuple[Any, ...]], None]:
        conn = psycopg.connect(PG_CONNINFO, autocommit=True)
        table = sql.Identifier(self.raw_schema, self.table)
        lock_timeout = sql.SQL("SET LOCAL lock_timeout = '10s'")
        lock = sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(table)
        notify = sql.SQL("NOTIFY {}").format(sql.Identifier(self.table))
        insert = sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id"
        ).format(table)

        def write(row: tuple[Any, ...]) -> None:
            # What eventsourcing's PostgresApplicationRecorder.insert_events does
            # for one message: one pipelined transaction that takes the table
            # lock, notifies, inserts and reads back the notification id.
            with conn.pipeline() as pipeline, conn.transaction(), conn.cursor() as cur:
                cur.execute(lock_timeout, prepare=True)
                cur.execute(lock, prepare=True)
                cur.execute(notify)
                cur.execute(insert, row, prepare=True)
                pipeline.sync()
                cur.fetchone()

        write.conn = conn  # type: ignore[attr-defined]
        return write

    def raw_close_writer(self, writer: Callable[[tuple[Any, ...]], None]) -> None:
        writer.conn.close()  # type: ignore[attr-defined]

    def raw_select_rows(self, session_id: UUID) -> list[tuple[Any, ...]]:
        if self._reader is None:
            self._reader = psycopg.connect(PG_CONNINFO, autocommit=True)
        return self._reader.execute(
            sql.SQL(
                "SELECT originator_id, originator_version, topic, state FROM {}.{} "
                "WHERE originator_id = %s ORDER BY originator_version ASC"
            ).format(sql.Identifier(self.schema), sql.Identifier(self.table)),
            (session_id,),
            prepare=True,
        ).fetchall()

    def raw_select(self, session_id: UUID) -> int:
        return len(self.raw_select_rows(session_id))

    def durability(self, ledger: ChatLedger) -> str:
        with psycopg.connect(PG_CONNINFO) as conn:
            settings = {
                name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
                for name in ("synchronous_commit", "fsync", "wal_sync_method")
            }
        return ", ".join(f"{k}={v}" for k, v in settings.items()) + " (server-wide: same for both)"

    def _drop(self, schema: str) -> None:
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    def cleanup(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._drop(self.schema)
        self._drop(self.raw_schema)

