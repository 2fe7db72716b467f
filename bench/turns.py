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
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID, uuid4

from chatledger import ChatLedger

from turns_backends import (  # noqa: F401 - re-exported for bench/hotpath_ab.py
    BOT_TEXT, PG_BASE, PG_CONNINFO, USER_TEXT, Backend, PostgresBackend, SQLiteBackend, WriteResult, pct,
)
from turns_report import print_report, profile_reads, profile_turns, snapshots_disabled


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
