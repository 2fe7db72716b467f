"""Client CPU per turn of one writer, the figure each hot-path cut is judged by.

    python bench/turn_cpu.py [--backends sqlite,postgres] [--turns 400] [--rounds 3] [--profile N]

One writer, one conversation: ``--turns`` turns (a turn: ``ledger.receive`` of ~80
characters + ``ledger.reply`` of ~330, two durable commits) after 30 warm-up turns, on a
fresh SQLite file (WAL, ``synchronous=FULL``) or PostgreSQL schema per round. Printed per
round: this process's CPU time (``os.times()``, user and system apart: SQLite's own work
and fsync's system time are in it; the PostgreSQL server's is not) ÷ turns, and wall ÷ turns;
then min / median over ``--rounds``. CPU time moves much less with the neighbours' load
than wall time does, so it is the figure to compare between commits (run both in the same
half hour). ``--profile N`` prints cProfile's top N functions by own time (one round).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from uuid import uuid4

import psycopg

from chatledger import ChatLedger

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
USER_TEXT = "Hi, I ordered a blue jacket last week and it has not arrived yet. Where is it now?"[:80]
BOT_TEXT = (
    "Sorry about that! Let me check order A-17 for you: it left our warehouse yesterday "
    "afternoon and is now with the courier, who expects to deliver it tomorrow between 9 "
    "and 12. You will get a text message with a tracking link an hour before it arrives. "
    "If nobody is home, the courier leaves it at the pickup point on your street."
)[:330]


def turns(ledger: ChatLedger, visitor: str, n: int) -> None:
    for _ in range(n):
        sid = ledger.receive(visitor, USER_TEXT).session_id
        ledger.reply(sid, BOT_TEXT)


def one_round(backend: str, n: int, profile: cProfile.Profile | None) -> tuple[float, float, float]:
    tmp = tempfile.mkdtemp(prefix="turn-cpu-")
    schema = f"turncpu_{uuid4().hex[:10]}"
    url = f"sqlite:///{os.path.join(tmp, 'l.db')}" if backend == "sqlite" else f"{PG_BASE}?schema={schema}"
    ledger = ChatLedger.open(url)
    try:
        visitor = f"v-{uuid4().hex[:8]}"
        turns(ledger, visitor, 30)
        t0, w0 = os.times(), time.perf_counter()
        if profile is not None:
            profile.enable()
        turns(ledger, visitor, n)
        if profile is not None:
            profile.disable()
        t1, w1 = os.times(), time.perf_counter()
        user, system = (t1.user - t0.user) / n * 1000, (t1.system - t0.system) / n * 1000
        return user, system, (w1 - w0) / n * 1000
    finally:
        ledger.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if backend == "postgres":
            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--turns", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, help="print the top N functions by own time")
    args = ap.parse_args()
    for backend in args.backends.split(","):
        if args.profile:
            prof = cProfile.Profile(time.process_time)  # CPU time: waits do not count
            user, system, wall = one_round(backend, args.turns, prof)
            print(f"{backend}: profiled round, user {user:.3f} + system {system:.3f} ms/turn, wall {wall:.3f} ms/turn")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
            continue
        users, cpus, walls = [], [], []
        for r in range(args.rounds):
            user, system, wall = one_round(backend, args.turns, None)
            users.append(user)
            cpus.append(user + system)
            walls.append(wall)
            print(f"{backend} round {r + 1}: user {user:.3f} + system {system:.3f} ms/turn, wall {wall:.3f} ms/turn",
                  file=sys.stderr)
        print(
            f"{backend}: client cpu (user+system) ms/turn min {min(cpus):.3f} median {statistics.median(cpus):.3f}; "
            f"user min {min(users):.3f} median {statistics.median(users):.3f}; "
            f"wall ms/turn min {min(walls):.3f} median {statistics.median(walls):.3f} "
            f"({args.rounds} rounds x {args.turns} turns, load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
