"""Benchmark the sweeper (issue 3): expire N sessions, idle-sweep cost, memory.

    python bench/sweep.py --sessions 1000000            # SQLite file in a temp dir
    python bench/sweep.py --sessions 100000 --database postgresql://postgres@127.0.0.1:5432/test?schema=bench

How the sessions are written: ``Session.start`` + one ``receive`` per session
(the domain's own commands, two events each), saved ``--batch`` aggregates per
``ledger.save(*sessions)`` call, i.e. one transaction per batch, with explicit
``at`` times one millisecond apart. No Visitor aggregates are written: the
sweeper never reads them, and calling ``ledger.receive`` one by one would make
setup take hours at 1M.

Every figure is printed next to a baseline measured in the same process on the
same database:

- sweep throughput vs. raw ``executemany`` inserts of the same number of
  event-sized rows plus deletes of as many indexed rows (the I/O floor of the
  sweep), batch for batch;
- an idle sweep (nothing due) vs. the raw indexed range query it is built on;
- peak RSS (``ru_maxrss``) and current RSS after each phase.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chatledger import ChatLedger, SessionPolicy
from chatledger.domain.ids import uuid7
from chatledger.domain.policy import AppliedPolicy
from chatledger.domain.session import Session
from chatledger.projections.active_sessions import active_sessions
from sqlalchemy import BigInteger, Column, Integer, LargeBinary, MetaData, Table, select, text

T0 = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
IDLE = timedelta(minutes=30)


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak


def mem(label: str) -> tuple[float, float]:
    gc.collect()
    current, peak = rss_mb()
    print(f"  memory {label:<38} RSS {current:7.1f} MB   peak {peak:7.1f} MB")
    return current, peak


def seed(ledger: ChatLedger, first: int, count: int, batch: int) -> float:
    """Write ``count`` one-message sessions; returns seconds taken."""
    policy = AppliedPolicy.of(ledger.policy)
    started = time.perf_counter()
    for start in range(first, first + count, batch):
        sessions = []
        for i in range(start, min(first + count, start + batch)):
            at = T0 + timedelta(milliseconds=i)
            session = Session.start(session_id=uuid7(at), visitor_id=f"b-{i}", at=at, policy=policy)
            session.receive("hello, I have a question about my order", at=at)
            sessions.append(session)
        ledger.save(*sessions)
    return time.perf_counter() - started


def save_copy(db: Path, dest: Path) -> None:
    """A consistent copy of the SQLite database ``db`` (WAL included) at ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    src, dst = sqlite3.connect(db), sqlite3.connect(partial)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    partial.replace(dest)


def restore_copy(copy: Path, db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(copy, db)


def timed(fn, repeat: int = 1):  # type: ignore[no-untyped-def]
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def raw_range_query(ledger: ChatLedger, now: datetime) -> float:
    """The baseline of an idle sweep: the indexed range query alone."""
    query = (
        select(active_sessions)
        .where(active_sessions.c.expires_at < now)
        .order_by(active_sessions.c.expires_at, active_sessions.c.session_id)
        .limit(500)
    )

    def run() -> None:
        with ledger.projector.engine.connect() as conn:
            conn.execute(query).all()

    return timed(run, repeat=20)[0]


def raw_io_baseline(ledger: ChatLedger, n: int, batch: int) -> float:
    """Seconds for raw inserts of ``n`` event-sized rows + ``n`` indexed deletes."""
    md = MetaData()
    events = Table(
        "bench_raw_events",
        md,
        Column("id", Integer, primary_key=True),
        Column("state", LargeBinary),
    )
    index = Table(
        "bench_raw_index",
        md,
        Column("id", Integer, primary_key=True),
        Column("expires_at", BigInteger, index=True),
    )
    engine = ledger.projector.engine
    md.drop_all(engine)
    md.create_all(engine)
    payload = os.urandom(160).hex().encode()  # ~ a TimedOut event's JSON
    with engine.begin() as conn:
        for start in range(0, n, 10_000):
            conn.execute(
                index.insert(),
                [{"id": i, "expires_at": i} for i in range(start, min(n, start + 10_000))],
            )
    started = time.perf_counter()
    for start in range(0, n, batch):
        ids = range(start, min(n, start + batch))
        with engine.begin() as conn:
            conn.execute(events.insert(), [{"id": i, "state": payload} for i in ids])
        with engine.begin() as conn:
            conn.execute(index.delete().where(index.c.id.in_(list(ids))))
    seconds = time.perf_counter() - started
    md.drop_all(engine)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--database", default=None, help="default: a new SQLite file in a temp dir")
    parser.add_argument("--batch", type=int, default=1000, help="sessions per save() while seeding")
    parser.add_argument(
        "--sweep-batch",
        type=int,
        default=5000,
        help="sessions per sweep batch (ledger.sweep default)",
    )
    parser.add_argument("--profile", action="store_true", help="profile the big sweep (cProfile)")
    parser.add_argument(
        "--seed-cache",
        metavar="DIR",
        default=None,
        help="SQLite temp-dir runs only: keep copies of the seeded database in DIR/<sessions>/ "
        "(after the first 1,000 sessions, and after all of them) and reuse them on the next run "
        "instead of seeding again. Setup only: every measured phase runs as it does without it.",
    )
    args = parser.parse_args()
    n = args.sessions
    small = min(1000, n)
    tmp = None if args.database else tempfile.mkdtemp(prefix="chatledger-bench-")
    url = args.database or f"sqlite:///{tmp}/bench.db"
    db_path = Path(f"{tmp}/bench.db")
    cache = Path(args.seed_cache) / str(n) if args.seed_cache and tmp is not None else None
    restore = cache is not None and (cache / "small.db").exists() and (cache / "full.db").exists()
    if restore:
        assert cache is not None
        restore_copy(cache / "small.db", db_path)
    print(f"chatledger sweep benchmark: {n:,} sessions on {url.split('?')[0]}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")

    ledger = ChatLedger.open(url, policy=SessionPolicy(idle_timeout=IDLE))
    ledger.projector  # noqa: B018 - create the read-model tables
    base_rss = mem("after open")

    # -- 1,000 sessions: idle sweep cost at small scale
    if not restore:
        seed(ledger, 0, small, args.batch)
        if cache is not None:
            save_copy(db_path, cache / "small.db")
    ledger.sweep(T0)  # catches the index up
    nothing_due = T0  # every deadline is T0 + 30 min or later
    idle_small, _ = timed(lambda: ledger.sweep(nothing_due), repeat=20)
    raw_small = raw_range_query(ledger, nothing_due)

    # -- N sessions
    if restore:
        assert cache is not None
        ledger.close()
        restore_copy(cache / "full.db", db_path)
        ledger = ChatLedger.open(url, policy=SessionPolicy(idle_timeout=IDLE))
        ledger.projector  # noqa: B018
        print(f"restored {n - small:,} more seeded sessions from {cache} (ledger reopened)")
    else:
        seconds = seed(ledger, small, n - small, args.batch)
        print(f"seeded {n - small:,} more sessions in {seconds:.1f} s ({(n - small) / seconds:,.0f}/s)")
        if cache is not None:
            save_copy(db_path, cache / "full.db")
    after_seed = mem("after seeding")
    started = time.perf_counter()
    ledger.projector.catch_up(["active_sessions"], batch_size=5000)
    catch_up_s = time.perf_counter() - started
    print(
        f"index caught up with {2 * n:,} events in {catch_up_s:.1f} s ({2 * n / catch_up_s:,.0f} events/s)"
    )
    after_index = mem("after index catch-up")
    idle_big, _ = timed(lambda: ledger.sweep(nothing_due), repeat=20)
    raw_big = raw_range_query(ledger, nothing_due)

    # -- expire the first 1,000, then all the rest, watching peak RSS
    first_due = T0 + IDLE + timedelta(milliseconds=small)
    ledger.sweep(first_due)
    after_small_sweep = mem(f"after sweeping {small:,}")
    everything_due = T0 + IDLE + timedelta(milliseconds=n + 1)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    cpu_started = time.process_time()
    sweep_s, swept = timed(lambda: ledger.sweep(everything_due, batch_size=args.sweep_batch))
    sweep_cpu_s = time.process_time() - cpu_started
    if profiler:
        profiler.disable()
    after_sweep = mem(f"after sweeping {swept:,}")
    raw_s = raw_io_baseline(ledger, swept, args.sweep_batch)

    started = time.perf_counter()
    ledger.projector.catch_up(["active_sessions"], batch_size=5000)
    post_catch_up_s = time.perf_counter() - started
    idle_after, _ = timed(lambda: ledger.sweep(everything_due), repeat=20)
    after_all = mem("after projecting the timeouts")
    with ledger.projector.engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM chatledger_active_sessions")).scalar()
    ledger.close()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)

    rate, raw_rate = swept / sweep_s, swept / raw_s
    print("\nresults")
    print(f"  sweep: {swept:,} sessions timed out in {sweep_s:.2f} s = {rate:,.0f} sessions/s")
    print(
        f"    CPU time of this process during the sweep: {sweep_cpu_s:.2f} s "
        f"({sweep_cpu_s / swept * 1e6:.1f} us per session; wall/CPU {sweep_s / sweep_cpu_s:.2f})"
    )
    print(
        f"    baseline raw insert+delete of as many rows: {raw_rate:,.0f} rows/s; "
        f"ratio sweep/raw = {rate / raw_rate:.2f}"
    )
    print("  idle sweep (nothing due), best of 20:")
    print(
        f"    {small:>9,} sessions: {idle_small * 1000:6.2f} ms  (raw range query "
        f"{raw_small * 1000:.2f} ms, ratio {idle_small / raw_small:.1f})"
    )
    print(
        f"    {n:>9,} sessions: {idle_big * 1000:6.2f} ms  (raw range query "
        f"{raw_big * 1000:.2f} ms, ratio {idle_big / raw_big:.1f}); "
        f"growth x{idle_big / idle_small:.2f}"
    )
    print(f"    after the sweep (0 active): {idle_after * 1000:6.2f} ms")
    print(f"  projecting the {swept:,} timed-out events afterwards: {post_catch_up_s:.1f} s")
    print(
        f"  peak RSS: open {base_rss[1]:.0f} MB, seeded {after_seed[1]:.0f} MB, index "
        f"{after_index[1]:.0f} MB, swept {small:,} {after_small_sweep[1]:.0f} MB, swept "
        f"{swept:,} {after_sweep[1]:.0f} MB, end {after_all[1]:.0f} MB"
    )
    print(
        f"  current RSS: before sweeps {after_index[0]:.0f} MB, after {swept:,} expired "
        f"{after_sweep[0]:.0f} MB (ratio {after_sweep[0] / after_index[0]:.2f}); "
        f"at the end {after_all[0]:.0f} MB"
    )
    print(f"  index rows left: {left}")
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
        print("\nprofile of the big sweep (by own time)\n" + out.getvalue())


if __name__ == "__main__":
    main()
