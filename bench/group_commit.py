"""Group-commit benchmark (issue 12): turns/s with concurrent writers, as ratios
to raw drivers in the same run.

Run ``python bench/group_commit.py`` (``--help`` for the knobs). A turn is one
``ledger.receive`` (user, ~80 chars) plus one ``ledger.reply`` (bot, ~330
chars): two durable commits, each writer its own conversation. Beside it, in
the same run, the raw baseline: the same number of writers doing ``INSERT`` +
``COMMIT`` of a row of the same size per message (two per turn), with raw
``psycopg`` (one connection per writer) or raw ``sqlite3`` (WAL, synchronous
FULL as eventsourcing connects, one writer at a time as its pool allows).

- PostgreSQL: 1 writer, 4 writers (1 process x 4 threads), 16 writers (4
  processes x 4 threads); a schema of its own, dropped afterwards.
- SQLite: 16 threads in one process on one file.

For each chatledger run it also prints the client CPU per turn (user + system
time of the writer processes, divided by the turns) and how many commits the
group commit shared. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from typing import Any
from uuid import uuid4

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
USER_TEXT = "Hi, I ordered a blue jacket last week and it has not arrived yet. Where is it now?"[:80]
BOT_TEXT = (
    "Sorry about that! Let me check order A-17 for you: it left our warehouse yesterday "
    "afternoon and is now with the courier, who expects to deliver it tomorrow between 9 "
    "and 12. You will get a text message with a tracking link an hour before it arrives. "
    "If nobody is home, the courier leaves it at the pickup point on your street."
)[:330]
RAW_TABLE = "raw_messages"


# ----------------------------------------------------------------------------- writers


def ledger_worker(url: str, threads: int, seconds: float, start: Any, out: Any, tag: str) -> None:
    """One process: ``threads`` writers on one ledger, each its own conversation."""
    from chatledger import ChatLedger

    ledger = ChatLedger.open(url)
    visitors = [f"{tag}-{uuid4().hex[:8]}-{t}" for t in range(threads)]
    for v in visitors:  # warm up: the session exists, the keys are made, the cache is warm
        turn = ledger.receive(v, USER_TEXT)
        ledger.reply(turn.session_id, BOT_TEXT)
    counts = [0] * threads
    stop = threading.Event()
    go = threading.Barrier(threads + 1)

    def write(i: int) -> None:
        go.wait()
        v = visitors[i]
        while not stop.is_set():
            turn = ledger.receive(v, USER_TEXT)
            ledger.reply(turn.session_id, BOT_TEXT)
            counts[i] += 1

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    cpu0 = os.times()
    t0 = time.perf_counter()
    go.wait()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    store: Any = ledger.events
    out.put((sum(counts), elapsed, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), getattr(store, "batches", 0)))
    ledger.close()


def raw_pg_worker(conninfo: str, schema: str, threads: int, seconds: float, start: Any, out: Any, tag: str) -> None:
    import psycopg

    conns = [psycopg.connect(conninfo) for _ in range(threads)]
    for c in conns:
        c.execute(f"SET search_path TO {schema}")
        c.commit()
    counts = [0] * threads
    stop = threading.Event()
    go = threading.Barrier(threads + 1)
    user = USER_TEXT.encode()
    bot = BOT_TEXT.encode()

    def write(i: int) -> None:
        conn = conns[i]
        oid = uuid4()
        version = 0
        go.wait()
        while not stop.is_set():
            for payload in (user, bot):
                version += 1
                conn.execute(
                    f"INSERT INTO {RAW_TABLE} (originator_id, originator_version, topic, state) "
                    "VALUES (%s,%s,%s,%s) RETURNING notification_id",
                    (oid, version, "Session.Message", payload),
                ).fetchone()
                conn.commit()
            counts[i] += 1

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    cpu0 = os.times()
    t0 = time.perf_counter()
    go.wait()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    out.put((sum(counts), elapsed, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 0))
    for c in conns:
        c.close()


def raw_sqlite_worker(path: str, threads: int, seconds: float, start: Any, out: Any, tag: str) -> None:
    conns = []
    for _ in range(threads):
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        c.execute("PRAGMA journal_mode=WAL")
        conns.append(c)
    lock = threading.Lock()  # eventsourcing's pool lets one connection write at a time
    counts = [0] * threads
    stop = threading.Event()
    go = threading.Barrier(threads + 1)
    user = USER_TEXT.encode()
    bot = BOT_TEXT.encode()

    def write(i: int) -> None:
        conn = conns[i]
        oid = uuid4().hex
        version = 0
        go.wait()
        while not stop.is_set():
            for payload in (user, bot):
                version += 1
                with lock:
                    conn.execute("BEGIN")
                    conn.execute(
                        f"INSERT INTO {RAW_TABLE} (originator_id, originator_version, topic, state) VALUES (?,?,?,?)",
                        (oid, version, "Session.Message", payload),
                    ).lastrowid  # noqa: B018
                    conn.execute("COMMIT")
            counts[i] += 1

    workers = [threading.Thread(target=write, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    cpu0 = os.times()
    t0 = time.perf_counter()
    go.wait()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    out.put((sum(counts), elapsed, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 0))
    for c in conns:
        c.close()


def run(target: Any, args: tuple[Any, ...], processes: int, threads: int, seconds: float) -> dict[str, float]:
    """Start ``processes`` processes of ``threads`` writers, run them together; the totals."""
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(processes + 1)  # every process warmed up and ready
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, threads, seconds, start, out, f"p{p}")) for p in range(processes)]
    for p in procs:
        p.start()
    start.wait(timeout=300)
    results = [out.get(timeout=120 + seconds) for _ in procs]
    for p in procs:
        p.join()
    turns = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    cpu = sum(r[2] for r in results)
    return {
        "turns": turns,
        "turns_per_s": turns / elapsed,
        "cpu_ms_per_turn": 1000 * cpu / turns if turns else float("nan"),
        "shared_commits": sum(r[3] for r in results),
    }


# ----------------------------------------------------------------------------- setups


def pg_setup(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.{RAW_TABLE} (originator_id uuid NOT NULL, "
            "originator_version bigint NOT NULL, topic text NOT NULL, state bytea, "
            "notification_id bigserial, PRIMARY KEY (originator_id, originator_version))"
        )


def pg_drop(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def sqlite_raw_setup(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} (originator_id TEXT NOT NULL, originator_version INTEGER NOT NULL, "
        "topic TEXT NOT NULL, state BLOB, PRIMARY KEY (originator_id, originator_version))"
    )
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each measured run")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration (min/median printed)")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    a = parser.parse_args()

    configs: list[tuple[str, int, int]] = []
    if not a.skip_postgres:
        configs += [("postgres", 1, 1), ("postgres", 1, 4), ("postgres", 4, 4)]
    if not a.skip_sqlite:
        configs += [("sqlite", 1, 16)]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {a.seconds:.0f} s per run, repeat {a.repeat}")
    print(f"{'backend':9} {'writers':>12} {'raw t/s':>9} {'ledger t/s':>10} {'ratio':>6} {'cpu ms/turn':>11} {'raw cpu':>8} {'shared':>7}")
    for backend, processes, threads in configs:
        ratios: list[float] = []
        rows: list[tuple[dict[str, float], dict[str, float]]] = []
        for _ in range(a.repeat):
            if backend == "postgres":
                schema = f"bench_gc_{uuid4().hex[:10]}"
                pg_setup(schema)
                try:
                    raw = run(raw_pg_worker, (PG_CONNINFO, schema), processes, threads, a.seconds)
                    led = run(ledger_worker, (f"{PG_BASE}?schema={schema}",), processes, threads, a.seconds)
                finally:
                    pg_drop(schema)
            else:
                d = tempfile.mkdtemp(prefix="bench-gc-")
                try:
                    sqlite_raw_setup(os.path.join(d, "raw.db"))
                    raw = run(raw_sqlite_worker, (os.path.join(d, "raw.db"),), processes, threads, a.seconds)
                    led = run(ledger_worker, (f"sqlite:///{d}/ledger.db",), processes, threads, a.seconds)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
            ratios.append(led["turns_per_s"] / raw["turns_per_s"])
            rows.append((raw, led))
            writers = f"{processes}x{threads}={processes * threads}"
            print(
                f"{backend:9} {writers:>12} {raw['turns_per_s']:9.1f} {led['turns_per_s']:10.1f} "
                f"{ratios[-1]:6.2f} {led['cpu_ms_per_turn']:11.2f} {raw['cpu_ms_per_turn']:8.2f} {int(led['shared_commits']):7d}",
                flush=True,
            )
        if a.repeat > 1:
            print(f"{'':9} {'':>12} ratio min {min(ratios):.2f} median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
