"""The write scenarios of bench/peers.py: SQLite in threads, PostgreSQL in processes × threads.

Every run starts on a fresh SQLite file / a fresh conversation, after one warm-up turn of
its own (connection pool, tables, imports), and is timed from the moment all its writers
start together to the moment the last one finishes.
"""

from __future__ import annotations

import contextlib
import cProfile
import multiprocessing
import os
import time
import traceback
from multiprocessing.pool import Pool
from typing import Any

import psycopg
from psycopg import sql

from peer_common import PG_CONNINFO, Run, drive
from peer_contenders import make

SQLITE_CONTENDERS = ("raw", "chatledger", "eventsourcing", "agents")
PG_CONTENDERS = ("raw", "chatledger", "eventsourcing")
BARRIER_TIMEOUT = 300  # seconds a process waits for the others of its run to be ready


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def sqlite_run(workdir: str, name: str, conversations: int, turns: int, tag: str) -> Run:
    """``conversations`` conversations of contender ``name``, one thread each, on a fresh file."""
    path = os.path.join(workdir, f"{name}-{tag}.db")
    remove_db(path)
    contender = make(name, path)
    try:
        contender.writer(f"warmup-{tag}")(0)
        writers = [contender.writer(f"{tag}-{i}") for i in range(conversations)]
        start, end, cpu, lat = drive(writers, turns)
    finally:
        contender.close()
        remove_db(path)
    return Run(messages=len(lat), seconds=end - start, cpu=cpu, latencies=lat)


# ---------------------------------------------------------------------------- PostgreSQL


def pg_schema(tag: str, name: str) -> str:
    return f"bench_peers_{tag}_{name}"


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def pg_job(name: str, schema: str, threads: int, turns: int, prefix: str, barrier: Any,
           profile_path: str | None = None) -> tuple[float, float, float, list[float]]:
    """One process of a PostgreSQL run: ``threads`` writers, each its own conversation.

    Runs in a worker process; waits at ``barrier`` for the run's other processes.
    With ``profile_path``, each writer thread is profiled with cProfile (the stats of
    the threads are merged and dumped there).
    """
    try:
        contender = make(name, f"pg:{schema}", create=False)
    except BaseException:
        barrier.abort()  # the run's other processes must not wait for this one
        raise
    try:
        contender.writer(f"warmup-{prefix}")(0)
        writers = [contender.writer(f"{prefix}-{i}") for i in range(threads)]
        profiles: list[cProfile.Profile] = []
        if profile_path is not None:
            writers = [profiled(w, profiles) for w in writers]
        barrier.wait(BARRIER_TIMEOUT)
        result = drive(writers, turns)
        if profiles:
            dump_profiles(profiles, profile_path)
        return result
    except BaseException:
        traceback.print_exc()  # the parent re-raises the first failed job's error only
        barrier.abort()
        raise
    finally:
        contender.close()


def profiled(write: Any, profiles: list[cProfile.Profile]) -> Any:
    """``write`` with a cProfile of its own thread, enabled around each call."""
    profile = cProfile.Profile()
    profiles.append(profile)

    def run(k: int) -> None:
        profile.enable()
        try:
            write(k)
        finally:
            profile.disable()

    return run


def dump_profiles(profiles: list[cProfile.Profile], path: str | None) -> None:
    import pstats

    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    stats.dump_stats(path)


class PostgresRunner:
    """A pool of worker processes (spawned once) that run PostgreSQL writers together."""

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.manager = ctx.Manager()
        self.pool: Pool = ctx.Pool(processes)
        self.processes = processes

    def run(self, name: str, schema: str, processes: int, threads: int, turns: int, tag: str,
            profile_dir: str | None = None) -> Run:
        assert processes <= self.processes
        barrier = self.manager.Barrier(processes)
        jobs = [
            (name, schema, threads, turns, f"{tag}-p{p}", barrier,
             os.path.join(profile_dir, f"{name}-{tag}-p{p}.prof") if profile_dir else None)
            for p in range(processes)
        ]
        results = self.pool.starmap_async(pg_job, jobs, chunksize=1).get(timeout=BARRIER_TIMEOUT + 600)
        start = min(r[0] for r in results)
        end = max(r[1] for r in results)
        lat = [x for r in results for x in r[3]]
        return Run(messages=len(lat), seconds=end - start, cpu=sum(r[2] for r in results), latencies=lat)

    def close(self) -> None:
        # terminate, not join: a worker that opened psycopg pools may keep a thread
        # alive at exit; every job has returned by now.
        self.pool.terminate()
        self.manager.shutdown()


def prepare_pg(tag: str, names: tuple[str, ...]) -> dict[str, str]:
    """A fresh schema per contender, its tables created once here (not in the racing writers)."""
    schemas = {}
    for name in names:
        schema = pg_schema(tag, name)
        drop_schema(schema)
        make(name, f"pg:{schema}").close()
        schemas[name] = schema
    return schemas


def settle(seconds: float = 0.2) -> None:
    """A short pause between runs, so one run's fsyncs do not spill into the next."""
    time.sleep(seconds)
