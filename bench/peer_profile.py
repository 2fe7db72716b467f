"""Where the time of one chatledger turn goes, and the floor of this machine.

    python bench/peer_profile.py [--backends sqlite,postgres] [--turns 200]

cProfile of chatledger's turns (receive + reply) in two scenarios of bench/peers.py —
SQLite one conversation, and PostgreSQL 16 writers (4 processes × 4 threads, each thread
profiled around its own calls, the stats merged) — with every function's own time put in
one bucket (validation, encryption, hash chain, SQL insert, commit/fsync, …), in ms per
turn and % of the profiled total. cProfile inflates Python-heavy buckets (≈1.5–2× here);
compare the buckets with each other and with the floor, not with the unprofiled wall time
(printed beside them). The floor: one 4 KiB write + fdatasync, raw sqlite3 INSERT+COMMIT
(synchronous=FULL and OFF), raw psycopg INSERT+COMMIT and ``SELECT 1``.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict

from uuid import uuid4

import psycopg

from peer_common import PG_CONNINFO, fsync_floor, pct
from peer_contenders import make
from peer_scenarios import PostgresRunner, drop_schema, prepare_pg, remove_db

# (bucket, substrings of "file:function"); the first bucket that matches wins.
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    # commit_queue.put blocks in ``with self._turn`` (a C lock: its wait is put's own time)
    ("group commit: waiting for the write turn (another caller's batch being written)",
     ("chatledger/application/commit_queue.py:put",)),
    ("commit + fsync (sqlite3 COMMIT)", ("<method 'commit' of 'sqlite3",)),
    ("validation (arguments, pydantic, domain checks)",
     ("pydantic", "chatledger/application/arguments.py", "chatledger/domain/validation.py")),
    ("encryption + keys (envelopes, key ring, cryptography)",
     ("cryptography", "chatledger/infrastructure/envelopes.py", "chatledger/infrastructure/personal_fields.py",
      "chatledger/infrastructure/key_ring.py", "chatledger/infrastructure/key_audit.py",
      "chatledger/infrastructure/shredding_mapper.py", "chatledger/infrastructure/sealed_decoding.py")),
    ("hash chain + sealing", ("chatledger/infrastructure/hashchain.py", "chatledger/infrastructure/sealing.py",
                              "_hashlib", "hashlib", "verification.py")),
    ("snapshot", ("chatledger/infrastructure/snapshots.py", "snapshot")),
    ("cache / copy", ("copy.py", "deepcopy", "cache")),
    ("mapping / transcoding (json, mapper)", ("json", "eventsourcing/persistence.py", "uuid.py", "datetime")),
    ("locks / thread waits", ("acquire' of '_thread", "threading.py")),
    ("driver (psycopg Python side)", ("psycopg",)),
    ("eventsourcing (application, repository, recorder)", ("eventsourcing/",)),
    ("chatledger (application, domain, recorders)", ("chatledger/",)),
]
PG_WAITS = ("psycopg/connection.py:wait", "psycopg/waiting.py", "wait_c", "select.poll", "select.epoll")
COUNTED = (("sqlite3 COMMIT", "<method 'commit' of 'sqlite3"), ("sqlite3 execute", "<method 'execute' of 'sqlite3"),
           ("psycopg pipeline sync", "_pipeline.py:sync"), ("psycopg wait", "psycopg/connection.py:wait"))
SQL_METHODS = ("<method 'execute' of 'sqlite3", "<method 'executemany' of 'sqlite3", "<method 'fetch")


def label(func: tuple[str, int, str]) -> str:
    return f"{func[0]}:{func[2]}"


def bucket_of(name: str) -> str:
    for bucket, needles in BUCKETS:
        if any(n in name for n in needles):
            return bucket
    return "other (stdlib, interpreter)"


def sql_bucket(caller: str) -> str:
    if "hash" in caller or "prev_event" in caller:
        return "hash chain + sealing"
    if "insert" in caller or "write_batch" in caller or "_write_keys" in caller:
        return "SQL insert (sqlite3 execute of the event/key rows)"
    return "SQL other (BEGIN, fast-forward/visitor reads)"


def pg_wait_bucket(caller: str) -> str:
    """The client blocked on the server, by what it was waiting for."""
    if caller.endswith("_pipeline.py:sync"):
        return "PostgreSQL wait: the write transaction (EXCLUSIVE lock queue, inserts, COMMIT)"
    return "PostgreSQL wait: other round trips (reads, key check, pipeline enter/exit)"


def buckets(stats: pstats.Stats) -> dict[str, float]:
    """Own time per bucket (seconds); sqlite3's execute split by the function that called it."""
    out: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = label(func)
        if any(w in name for w in PG_WAITS):
            for caller, values in callers.items():
                out[pg_wait_bucket(label(caller))] += values[2]
            continue
        if any(m in name for m in SQL_METHODS):
            for caller, values in callers.items():
                out[sql_bucket(label(caller))] += values[2]
            continue
        out[bucket_of(name)] += tt
    return out


def print_table(title: str, stats: pstats.Stats, turns: int, wall_per_turn: float) -> None:
    parts = buckets(stats)
    total = sum(parts.values())
    print(f"\n== {title}: {turns} turns profiled; unprofiled wall {wall_per_turn * 1e3:.2f} ms/turn, "
          f"profiled total {total / turns * 1e3:.2f} ms/turn")
    print(f"| {'where the time goes':<84} | {'ms/turn':>8} | {'%':>5} |")
    print(f"|{'-' * 86}|{'-' * 10}|{'-' * 7}|")
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name:<84} | {seconds / turns * 1e3:>8.3f} | {seconds / total * 100:>5.1f} |")
    calls = defaultdict(int)
    for func, (_cc, nc, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        for key, needle in COUNTED:
            if needle in label(func):
                calls[key] += nc
    print("calls per turn: " + ", ".join(f"{k} {v / turns:.1f}" for k, v in calls.items()))


def sqlite_profile(workdir: str, turns: int) -> None:
    path = os.path.join(workdir, "profile.db")
    remove_db(path)
    c = make("chatledger", path)
    try:
        c.writer("warmup")(0)
        write = c.writer("timed")
        t0 = time.perf_counter()
        for k in range(2 * turns):
            write(k)
        wall = (time.perf_counter() - t0) / turns
        write = c.writer("profiled")
        profile = cProfile.Profile()
        profile.enable()
        for k in range(2 * turns):
            write(k)
        profile.disable()
    finally:
        c.close()
        remove_db(path)
    print_table("SQLite, 1 conversation (chatledger)", pstats.Stats(profile), turns, wall)
    if os.environ.get("PEER_PROFILE_TOP"):
        pstats.Stats(profile).sort_stats("tottime").print_stats(int(os.environ["PEER_PROFILE_TOP"]))


def postgres_profile(workdir: str, turns: int) -> None:
    tag = uuid4().hex[:8]
    schemas = prepare_pg(f"prof{tag}", ("chatledger",))
    runner = PostgresRunner(4)
    per_writer = max(5, turns // 16)
    try:
        wall_run = runner.run("chatledger", schemas["chatledger"], 4, 4, per_writer, f"{tag}-wall")
        runner.run("chatledger", schemas["chatledger"], 4, 4, per_writer, f"{tag}-prof", profile_dir=workdir)
    finally:
        runner.close()
        drop_schema(schemas["chatledger"])
    files = glob.glob(os.path.join(workdir, f"chatledger-{tag}-prof-p*.prof"))
    stats = pstats.Stats(files[0])
    for f in files[1:]:
        stats.add(f)
    n = per_writer * 16
    print_table(f"PostgreSQL, 16 writers, 4x4 (chatledger; {wall_run.turns_per_s:.0f} turns/s unprofiled, "
                f"so {1 / wall_run.turns_per_s * 1e3:.2f} ms of wall per turn, shared by 16 writers)",
                stats, n, 16 / wall_run.turns_per_s)
    if os.environ.get("PEER_PROFILE_TOP"):
        stats.sort_stats("tottime").print_stats(int(os.environ["PEER_PROFILE_TOP"]))


def floor(workdir: str, messages: int) -> None:
    print("\n== the floor of this machine (median per message / call)")
    print(f"one 4 KiB write + fdatasync: {fsync_floor(workdir) * 1e3:.3f} ms")
    for sync in ("FULL", "OFF"):
        path = os.path.join(workdir, f"floor-{sync}.db")
        remove_db(path)
        raw = make("raw", path)
        write = raw.writer("floor")
        for conn in raw.conns:
            conn.execute(f"PRAGMA synchronous={sync}")
        lat = []
        for k in range(messages):
            t0 = time.perf_counter()
            write(k)
            lat.append(time.perf_counter() - t0)
        raw.close()
        remove_db(path)
        print(f"raw sqlite3 INSERT+COMMIT, WAL, synchronous={sync}: p50 {pct(lat, 0.5) * 1e3:.3f} ms, "
              f"p99 {pct(lat, 0.99) * 1e3:.3f} ms")
    try:
        schema = f"bench_floor_{uuid4().hex[:8]}"
        raw = make("raw", f"pg:{schema}")
        write = raw.writer("floor")
        lat = []
        for k in range(messages):
            t0 = time.perf_counter()
            write(k)
            lat.append(time.perf_counter() - t0)
        raw.close()
        drop_schema(schema)
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            rt = []
            for _ in range(messages):
                t0 = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                rt.append(time.perf_counter() - t0)
        print(f"raw psycopg INSERT+COMMIT (autocommit, 1 writer): p50 {pct(lat, 0.5) * 1e3:.3f} ms; "
              f"SELECT 1 round trip: p50 {statistics.median(rt) * 1e3:.3f} ms")
    except psycopg.OperationalError as err:
        print(f"PostgreSQL not reachable: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--turns", type=int, default=200, help="turns profiled per scenario")
    args = ap.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="chatledger-profile-")
    print(f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    try:
        backends = args.backends.split(",")
        if "sqlite" in backends:
            sqlite_profile(workdir, args.turns)
        if "postgres" in backends:
            postgres_profile(workdir, args.turns)
        floor(workdir, 200)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


