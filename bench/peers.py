"""One command: chatledger beside raw sqlite3/psycopg, eventsourcing and the OpenAI Agents SDK.

    python bench/peers.py --quick      # about 2 minutes
    python bench/peers.py              # the full run (see docs/benchmarks.md)

Needs the ``[bench]`` extra (``pip install -e ".[bench]"``) and the PostgreSQL server
(``--backends sqlite`` without it). Every figure is printed as a ratio to the raw baseline
measured in the same trial of the same run (the machine is shared; absolute figures move 2×
with load); trials rotate the order of the contenders; medians and minima over trials.
A turn is a user message (~80 characters) and a bot reply (~330), two durable commits.

Scenarios: SQLite, 1 conversation, one call per message (fsync'd: WAL + synchronous=FULL);
SQLite, 16 conversations at once in one process (a thread each); PostgreSQL 1 / 4 / 16
writers (1×1, 1 process × 4 threads, 4 processes × 4 threads; each writer its own
conversation); p99 per call; a long conversation (SQLite): cost per call at message
N ÷ at message 0..window, cold load ÷ raw select, file size ÷ text payload.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any
from uuid import uuid4

from peer_common import Run, fsync_floor
from peer_long import long_run
from peer_scenarios import (
    PG_CONTENDERS,
    SQLITE_CONTENDERS,
    PostgresRunner,
    drop_schema,
    prepare_pg,
    settle,
    sqlite_run,
)

PG_SHAPES = ((1, 1), (1, 4), (4, 4))  # (processes, threads): 1, 4, 16 writers


def rotate(names: tuple[str, ...], t: int) -> list[str]:
    k = t % len(names)
    return list(names[k:] + names[:k])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace, workdir: str, tag: str) -> dict[str, Any]:
    writes: dict[str, dict[str, list[Run]]] = {}
    long: dict[str, list[dict[str, Any]]] = {}
    sqlite_names = tuple(n for n in SQLITE_CONTENDERS if n in args.contenders)
    pg_names = tuple(n for n in PG_CONTENDERS if n in args.contenders)
    backends = args.backends.split(",")
    runner = PostgresRunner(4) if "postgres" in backends else None
    schemas: dict[str, str] = {}
    try:
        for t in range(args.trials):
            if "sqlite" in backends:
                for key, conversations, turns in (("sqlite 1 conversation", 1, args.single_turns),
                                                  ("sqlite 16 conversations", 16, args.conc_turns)):
                    for name in rotate(sqlite_names, t):
                        log(f"[trial {t + 1}/{args.trials}] {key}: {name}")
                        run = sqlite_run(workdir, name, conversations, turns, f"{tag}-{t}-{conversations}")
                        writes.setdefault(key, {}).setdefault(name, []).append(run)
                        settle()
                for name in rotate(sqlite_names, t):
                    log(f"[trial {t + 1}/{args.trials}] long conversation: {name}")
                    long.setdefault(name, []).append(
                        long_run(workdir, name, args.long_messages, args.window, args.repeat, f"{tag}-{t}"))
            if runner is not None:
                schemas = prepare_pg(f"{tag}{t}", pg_names)
                for procs, threads in PG_SHAPES:
                    key = f"postgres {procs * threads} writers ({procs}x{threads})"
                    turns = max(10, args.pg_turns // (procs * threads))
                    for name in rotate(pg_names, t):
                        log(f"[trial {t + 1}/{args.trials}] {key}: {name}")
                        run = runner.run(name, schemas[name], procs, threads, turns, f"{tag}-{t}-{procs}x{threads}")
                        writes.setdefault(key, {}).setdefault(name, []).append(run)
                        settle()
                for schema in schemas.values():
                    drop_schema(schema)
                schemas = {}
    finally:
        for schema in schemas.values():
            drop_schema(schema)
        if runner is not None:
            runner.close()
    return {"writes": writes, "long": long, "fsync_ms": fsync_floor(workdir) * 1e3}


def ratios(runs: dict[str, list[Run]], name: str, attr: str, invert: bool = False) -> list[float]:
    """Per trial: contender ÷ raw of the same trial (raw ÷ contender if ``invert``)."""
    out = []
    for mine, raw in zip(runs[name], runs["raw"], strict=True):
        a, b = getattr(mine, attr), getattr(raw, attr)
        out.append(b / a if invert else a / b)
    return out


def med_min(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f})"


def report(res: dict[str, Any], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    p = print
    summary: dict[str, Any] = {"writes": {}, "long": {}}
    p()
    p(f"chatledger vs peers -- {os.cpu_count()} CPUs, Python {platform.python_version()}, "
      f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at end, {args.trials} trials, "
      f"total {seconds:.0f} s{' (--quick)' if args.quick else ''}")
    p(f"disk floor: one 4 KiB write + fdatasync = {res['fsync_ms']:.3f} ms (median of 200)")
    p("ratio = contender / raw in the same trial: median (min) over trials; p99 ratio = contender p99 / raw p99")
    for key, runs in res["writes"].items():
        p()
        raw = runs["raw"]
        p(f"== {key}: {raw[0].messages // 2} turns per trial")
        p(f"{'contender':<15}{'turns/s':>9}{'x raw':>13}{'p50 ms':>9}{'p99 ms':>9}{'p99 x raw':>15}"
          f"{'CPU us/msg':>12}")
        summary["writes"][key] = {}
        for name, mine in runs.items():
            tps = statistics.median(r.turns_per_s for r in mine)
            speed = ratios(runs, name, "turns_per_s")
            p99 = ratios(runs, name, "p99")
            cpu = statistics.median(r.cpu_us_per_message for r in mine)
            p(f"{name:<15}{tps:>9.1f}{med_min(speed):>13}{statistics.median(r.p50 for r in mine) * 1e3:>9.2f}"
              f"{statistics.median(r.p99 for r in mine) * 1e3:>9.2f}{med_min(p99):>15}{cpu:>12.0f}")
            summary["writes"][key][name] = {
                "turns_per_s": round(tps, 1), "x_raw_median": round(statistics.median(speed), 3),
                "x_raw_min": round(min(speed), 3), "p99_x_raw_median": round(statistics.median(p99), 2),
                "cpu_us_per_message": round(cpu), "trials": [r.to_json() for r in mine],
            }
    if res["long"]:
        p()
        raw = res["long"]["raw"]
        p(f"== long conversation (SQLite): {raw[0]['messages']} messages; windows of {args.window} calls "
          f"at message 0 and at message {args.long_messages}")
        p(f"{'contender':<15}{'late/early':>11}{'late p99 ms':>13}{'p99 x raw':>10}{'cold ms':>9}"
          f"{'cold x raw':>14}{'file MB':>9}{'x payload':>10}")
        for name, mine in res["long"].items():
            def med(field: str, m: list[dict[str, Any]] = mine) -> float:
                return statistics.median(x[field] for x in m)
            cold = [m["cold_ms"] / r["cold_ms"] for m, r in zip(mine, raw, strict=True)]
            late_p99 = [m["late_p99_ms"] / r["late_p99_ms"] for m, r in zip(mine, raw, strict=True)]
            p(f"{name:<15}{med('amortized'):>11.2f}{med('late_p99_ms'):>13.2f}{statistics.median(late_p99):>10.2f}"
              f"{med('cold_ms'):>9.2f}{med_min(cold):>14}{med('bytes') / 1e6:>9.2f}{med('storage'):>10.2f}")
            summary["long"][name] = {
                "amortized_median": round(med("amortized"), 2), "cold_x_raw_median": round(statistics.median(cold), 2),
                "storage_x_payload": round(med("storage"), 2), "late_p99_x_raw": round(statistics.median(late_p99), 2),
                "trials": mine,
            }
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small runs, 2 trials: about 2 minutes")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--contenders", default="raw,chatledger,eventsourcing,agents")
    ap.add_argument("--trials", type=int, default=None, help="default 5 (2 with --quick)")
    ap.add_argument("--single-turns", type=int, default=None, help="SQLite 1 conversation (500; quick 100)")
    ap.add_argument("--conc-turns", type=int, default=None, help="turns per conversation, 16 at once (60; quick 15)")
    ap.add_argument("--pg-turns", type=int, default=None, help="turns per PostgreSQL run, shared by its writers (800; quick 160)")
    ap.add_argument("--long-messages", type=int, default=5000, help="the long conversation's length")
    ap.add_argument("--window", type=int, default=None, help="calls timed at each end (200; quick 100)")
    ap.add_argument("--repeat", type=int, default=5, help="cold loads per trial (median)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--workdir", default=None, help="where the SQLite files go (default: a temp dir)")
    args = ap.parse_args(argv)
    quick = args.quick
    for name, full, small in (("trials", 5, 2), ("single_turns", 500, 100), ("conc_turns", 60, 15),
                              ("pg_turns", 800, 160), ("window", 200, 100)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.contenders = tuple(args.contenders.split(","))
    if "raw" not in args.contenders:
        ap.error("the raw baseline is needed: every figure is a ratio to it")
    tag = uuid4().hex[:8]
    workdir = args.workdir or tempfile.mkdtemp(prefix="chatledger-peers-")
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    try:
        res = run_all(args, workdir, tag)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = report(res, args, time.perf_counter() - started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "fsync_ms": res["fsync_ms"], **summary}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
