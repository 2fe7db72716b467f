"""Session-engine benchmark (issue 2): durable turns and long-session reads.

Run ``python bench/turns.py`` (``--help`` for the knobs). In one run, on a
SQLite file and on PostgreSQL (a schema of its own, dropped afterwards), it
measures:

* durable turns per second -- one ``ledger.receive`` plus one ``ledger.reply``,
  each committed -- for 1 conversation and for N concurrent conversations, with
  p50/p99 latency per call;
* the physical-limit baseline: the very same message rows (copied byte for byte
  from the ledger's event table) written by raw ``sqlite3`` / ``psycopg`` into
  an identical table with the same durability settings, one commit per message,
  driven by the same threads in the same order;
* reading a 5,000-message session: cold cache with snapshots, cold cache without
  snapshots, warm cache, and a raw ``SELECT`` of the same rows.

This is a benchmark, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from uuid import UUID, uuid4

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


# ---------------------------------------------------------------------------- writes


def split(items: Sequence[Any], workers: int) -> list[list[Any]]:
    """Round-robin assignment of conversations to worker threads."""
    return [list(items[i::workers]) for i in range(workers)]


def run_threads(workers: int, target: Callable[[int], None]) -> float:
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers + 1)

    def wrapped(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def ledger_turns(
    ledger: ChatLedger, label: str, conversations: int, rounds: int, workers: int, tag: str
) -> tuple[WriteResult, list[UUID]]:
    """``conversations`` visitors; each of ``workers`` threads drives its share
    round-robin: per round, for each of its conversations, one receive + one reply."""
    visitors = [f"bench-{tag}-{label}-{i}" for i in range(conversations)]
    shares = split(visitors, workers)
    receive_lat: list[list[float]] = [[] for _ in range(workers)]
    reply_lat: list[list[float]] = [[] for _ in range(workers)]
    sessions: dict[str, UUID] = {}

    def work(i: int) -> None:
        perf = time.perf_counter
        r_lat, p_lat = receive_lat[i], reply_lat[i]
        for _ in range(rounds):
            for visitor in shares[i]:
                t0 = perf()
                turn = ledger.receive(visitor, USER_TEXT)
                t1 = perf()
                ledger.reply(turn.session_id, BOT_TEXT)
                t2 = perf()
                r_lat.append(t1 - t0)
                p_lat.append(t2 - t1)
                sessions[visitor] = turn.session_id

    elapsed = run_threads(workers, work)
    result = WriteResult(
        label=label,
        turns=conversations * rounds,
        seconds=elapsed,
        latencies={
            "receive": [x for xs in receive_lat for x in xs],
            "reply": [x for xs in reply_lat for x in xs],
        },
    )
    return result, [sessions[v] for v in visitors]


def combine(results: list[WriteResult]) -> dict[str, Any]:
    """Median throughput over trials; latency percentiles over all calls."""
    pooled: dict[str, list[float]] = {}
    for r in results:
        for name, values in r.latencies.items():
            pooled.setdefault(name, []).extend(values)
    merged = WriteResult(
        label=results[0].label.rstrip("0123456789"),
        turns=sum(r.turns for r in results),
        seconds=sum(r.seconds for r in results),
        latencies=pooled,
    )
    summary = merged.summary()
    summary["turns_per_s"] = round(statistics.median(r.turns_per_s for r in results), 1)
    summary["trials_turns_per_s"] = [round(r.turns_per_s, 1) for r in results]
    return summary


def raw_turns(
    backend: Backend, label: str, rows: dict[UUID, list[tuple[Any, ...]]], session_order: list[UUID],
    rounds: int, workers: int,
) -> WriteResult:
    """The same message rows, one commit per message, same threads and order."""
    shares = split(session_order, workers)
    writers = [backend.raw_writer() for _ in range(workers)]
    lat: list[list[float]] = [[] for _ in range(workers)]

    def work(i: int) -> None:
        perf = time.perf_counter
        write = writers[i]
        mine = lat[i]
        for r in range(rounds):
            for sid in shares[i]:
                for row in rows[sid][2 * r : 2 * r + 2]:
                    t0 = perf()
                    write(row)
                    mine.append(perf() - t0)

    try:
        elapsed = run_threads(workers, work)
    finally:
        for w in writers:
            backend.raw_close_writer(w)
    commits = [x for xs in lat for x in xs]
    return WriteResult(
        label=label,
        turns=len(commits) // 2,
        seconds=elapsed,
        latencies={"commit": commits},
    )


# ---------------------------------------------------------------------------- reads


def build_long_session(ledger: ChatLedger, messages: int, tag: str) -> UUID:
    """A session of ``messages`` messages, alternating user and bot.

    The first turn goes through ``receive``; the rest are the same domain
    commands ``receive``/``reply`` run, saved 100 events per ``save`` (so the
    build is fast), through the application's ``save``, which takes the usual
    snapshot every ``snapshot_interval`` events. The stored log is the one the
    ledger would have written turn by turn.
    """
    turn = ledger.receive(f"bench-{tag}-long", USER_TEXT)
    session = ledger.get_session(turn.session_id)
    now = turn.message.at
    pending = 0
    for i in range(1, messages):
        if i % 2:
            session.send(BOT_TEXT, at=now)
        else:
            session.receive(USER_TEXT, at=now)
        pending += 1
        if pending == 100:
            ledger.save(session)
            pending = 0
    ledger.save(session)
    return turn.session_id


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


@contextlib.contextmanager
def snapshots_disabled(ledger: ChatLedger) -> Iterator[None]:
    repo = ledger.repository
    saved = repo.snapshot_store
    repo.snapshot_store = None
    try:
        yield
    finally:
        repo.snapshot_store = saved


def read_bench(backend: Backend, ledger: ChatLedger, sid: UUID, messages: int, repeat: int) -> dict[str, Any]:
    cache = ledger.repository.cache
    assert cache is not None

    def evict() -> None:
        with contextlib.suppress(KeyError):
            cache.get(sid, evict=True)

    def cold() -> Any:
        evict()
        return ledger.session(sid)

    def check(state: Any) -> None:
        assert len(state.messages) == messages, (len(state.messages), messages)

    raw_rows = backend.raw_select(sid)
    assert raw_rows == messages + 1, raw_rows  # + the Started event
    raw_s, _ = timed(lambda: backend.raw_select(sid), repeat)
    raw_json_s, _ = timed(
        lambda: [json.loads(r[3]) for r in backend.raw_select_rows(sid)], repeat
    )
    snap_s, state = timed(cold, repeat)
    check(state)
    with snapshots_disabled(ledger):
        nosnap_s, state = timed(cold, repeat)
        check(state)
    ledger.session(sid)  # warm the cache
    warm_s, state = timed(lambda: ledger.session(sid), repeat)
    check(state)
    asof_s, state = timed(lambda: ledger.session(sid, as_of=state.last_activity_at), max(1, repeat // 2))
    check(state)
    return {
        "messages": messages,
        "rows": raw_rows,
        "raw_select_ms": raw_s * 1000,
        "raw_select_json_ms": raw_json_s * 1000,
        "cold_snapshot_ms": snap_s * 1000,
        "cold_no_snapshot_ms": nosnap_s * 1000,
        "warm_cache_ms": warm_s * 1000,
        "as_of_ms": asof_s * 1000,
    }


# ---------------------------------------------------------------------------- driver


def bench_backend(backend: Backend, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend.name}
    overrides = {"cache_size": args.cache_size} if args.cache_size is not None else {}
    ledger = ChatLedger.open(backend.ledger_url(), **overrides)
    try:
        out["durability"] = backend.durability(ledger)
        out["cache_size"] = ledger.settings.cache_size
        out["snapshot_interval"] = ledger.settings.snapshot_interval
        ledger.receive(f"bench-{tag}-warmup", "warm up")  # pool, tables, imports

        # Trials alternate ledger and raw runs, so both see the same machine
        # load (the machine is shared); each figure is the median over trials.
        writes: dict[str, dict[str, list[WriteResult]]] = {
            "one": {"ledger": [], "raw": []}, "many": {"ledger": [], "raw": []}
        }
        for t in range(args.trials):
            for key, conversations, rounds, workers in (
                ("one", 1, args.single_turns, 1),
                ("many", args.conversations, args.rounds, args.workers),
            ):
                led, sessions = ledger_turns(
                    ledger, f"{key}{t}", conversations, rounds, workers, tag
                )
                backend.raw_setup()  # a fresh table, as the ledger's was at first
                rows = backend.message_rows(sessions)
                raw = raw_turns(backend, f"{key}{t}", rows, sessions, rounds, workers)
                writes[key]["ledger"].append(led)
                writes[key]["raw"].append(raw)
        out["writes"] = {
            key: {side: combine(results) for side, results in sides.items()}
            for key, sides in writes.items()
        }

        # Reading a long session.
        sid = build_long_session(ledger, args.read_messages, tag)
        out["read"] = read_bench(backend, ledger, sid, args.read_messages, args.repeat)
        if args.profile:
            profile_turns(ledger, args.single_turns, tag, backend.name)
            profile_reads(ledger, sid, backend.name, args.read_messages)
    finally:
        ledger.close()
    return out


class Profiled:
    """pyinstrument (sampling, if installed) or cProfile around a block."""

    def __init__(self, title: str) -> None:
        self.title = title
        try:
            from pyinstrument import Profiler
        except ImportError:
            self.sampler = None
            self.profile = cProfile.Profile()
        else:
            self.sampler = Profiler(interval=0.0005)

    def __enter__(self) -> Self:
        if self.sampler is not None:
            self.sampler.start()
        else:
            self.profile.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            print(f"\n-- profile (pyinstrument): {self.title}")
            print(self.sampler.output_text(unicode=False, color=False))
        else:
            self.profile.disable()
            print_profile(self.profile, self.title, 25, "cumulative")
            print_profile(self.profile, self.title, 25, "tottime")


def profile_turns(ledger: ChatLedger, turns: int, tag: str, name: str) -> None:
    """The 1-conversation loop again, in this thread, profiled (not timed)."""
    visitor = f"bench-{tag}-profile"
    with Profiled(f"{name}: {turns} turns, 1 conversation"):
        for _ in range(turns):
            turn = ledger.receive(visitor, USER_TEXT)
            ledger.reply(turn.session_id, BOT_TEXT)


def profile_reads(ledger: ChatLedger, sid: UUID, name: str, messages: int) -> None:
    cache = ledger.repository.cache
    assert cache is not None
    for title, ctx in (
        ("cold cache, snapshots", contextlib.nullcontext()),
        ("cold cache, no snapshots", snapshots_disabled(ledger)),
    ):
        with ctx, Profiled(f"{name}: 5 x session() of {messages} messages, {title}"):
            for _ in range(5):
                with contextlib.suppress(KeyError):
                    cache.get(sid, evict=True)
                ledger.session(sid)


def print_report(results: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> None:
    p = print
    p()
    p(f"chatledger session-engine benchmark -- {os.cpu_count()} CPUs, Python {platform.python_version()}, "
      f"load average at end {os.getloadavg()[0]:.2f}, total {seconds:.0f} s")
    p("turn = ledger.receive() + ledger.reply(), each its own committed transaction.")
    p(f"'1 conversation': one thread, {args.single_turns} turns in a row (a fresh visitor per trial).")
    p(f"writes: {args.trials} trials alternating ledger and raw runs; turns/s = median over trials, "
      "latency percentiles over all calls of all trials.")
    p(f"'{args.conversations} concurrent': {args.conversations} visitors, each an open session; "
      f"{args.workers} worker threads share one ChatLedger, each thread owns "
      f"{args.conversations}/{args.workers} conversations and drives them round-robin "
      f"({args.rounds} rounds, so {args.conversations * args.rounds} turns; "
      f"at most {args.workers} calls in flight).")
    p("raw = the same message rows, copied from the ledger's table, inserted by plain "
      "sqlite3/psycopg into an identical table, one commit per message, same threads and order.")
    for res in results:
        p()
        p(f"== {res['backend']}  ({res['durability']}; cache_size={res['cache_size']}, "
          f"snapshot_interval={res['snapshot_interval']})")
        p(f"{'writes':<26}{'turns/s':>10}{'raw turns/s':>13}{'ledger/raw':>12}{'target':>9}"
          f"{'receive p50/p99 ms':>21}{'reply p50/p99 ms':>19}{'raw commit p50/p99':>21}")
        for key, name in (("one", "1 conversation"), ("many", f"{args.conversations} concurrent")):
            led, raw = res["writes"][key]["ledger"], res["writes"][key]["raw"]
            ratio = led["turns_per_s"] / raw["turns_per_s"]
            res["writes"][key]["ratio"] = round(ratio, 3)
            p(f"{name:<26}{led['turns_per_s']:>10.1f}{raw['turns_per_s']:>13.1f}{ratio:>12.2f}"
              f"{'>= 0.50 ' + ('met' if ratio >= 0.5 else 'MISSED'):>9}"
              f"{led['receive_p50_ms']:>12.2f}/{led['receive_p99_ms']:<8.2f}"
              f"{led['reply_p50_ms']:>10.2f}/{led['reply_p99_ms']:<8.2f}"
              f"{raw['commit_p50_ms']:>12.2f}/{raw['commit_p99_ms']:<8.2f}")
        r = res["read"]
        p(f"{'read ' + str(r['messages']) + '-message session':<40}{'ms':>9}{'x raw SELECT':>14}")
        for key, name in (
            ("raw_select_ms", f"raw SELECT of the {r['rows']} rows"),
            ("raw_select_json_ms", "raw SELECT + json.loads"),
            ("cold_snapshot_ms", "session(), cold cache, snapshots"),
            ("cold_no_snapshot_ms", "session(), cold cache, no snapshots"),
            ("warm_cache_ms", "session(), warm cache"),
            ("as_of_ms", "session(as_of=last), full replay"),
        ):
            ratio = r[key] / r["raw_select_ms"]
            r[key.replace("_ms", "_x")] = round(ratio, 2)
            verdict = ""
            if key in ("cold_snapshot_ms", "cold_no_snapshot_ms", "warm_cache_ms"):
                verdict = "  target <= 3x " + ("met" if ratio <= 3 else "MISSED")
            p(f"{name:<40}{r[key]:>9.2f}{ratio:>14.2f}{verdict}")


def print_profile(profile: cProfile.Profile, title: str, limit: int, key: str = "tottime") -> None:
    buf = io.StringIO()
    stats = pstats.Stats(profile, stream=buf).strip_dirs().sort_stats(key)
    stats.print_stats(limit)
    print(f"\n-- profile: {title} (top {limit} by {key})")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres", help="comma list: sqlite,postgres")
    ap.add_argument("--single-turns", type=int, default=500, help="turns of the 1-conversation run")
    ap.add_argument("--conversations", type=int, default=1000, help="concurrent conversations")
    ap.add_argument("--rounds", type=int, default=2, help="turns per concurrent conversation")
    ap.add_argument("--workers", type=int, default=8, help="threads driving the concurrent conversations")
    ap.add_argument("--read-messages", type=int, default=5000, help="messages in the long session")
    ap.add_argument("--trials", type=int, default=3,
                    help="alternating ledger/raw write trials; medians are reported")
    ap.add_argument("--cache-size", type=int, default=None,
                    help="ChatLedger cache_size (default: the Settings default)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions of each read (median)")
    ap.add_argument("--profile", action="store_true", help="profile (pyinstrument if installed, else cProfile) the 1-conversation turns and cold reads")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--workdir", default=None, help="where the SQLite files go (default: a temp dir)")
    args = ap.parse_args(argv)

    tag = uuid4().hex[:10]
    workdir = args.workdir or tempfile.mkdtemp(prefix="chatledger-bench-")
    started = time.perf_counter()
    results = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        backend: Backend = SQLiteBackend(workdir, tag) if name == "sqlite" else PostgresBackend(tag)
        print(f"[{name}] running...", file=sys.stderr, flush=True)
        try:
            results.append(bench_backend(backend, args, tag))
        finally:
            backend.cleanup()
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(results, args, time.perf_counter() - started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
