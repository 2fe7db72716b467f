"""New-visitor first-message latency and existing-visitor turns, on the public API only.

``python bench/first_message.py [--backend sqlite|postgres] [--visitors 300] [--turns 300] [--rounds 3]``

Runs on any commit (it uses only ``ChatLedger``), so before/after is a checkout
of each. Per round: ``--visitors`` calls ``ledger.receive(f"v-{i}", "hi")``, each
a visitor never seen (its first message: visitor + session + key + subject), then
``--turns`` turns (receive + reply) of one existing visitor. Medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from uuid import uuid4

import psycopg
from psycopg import sql

sys.path.insert(0, os.path.dirname(__file__))
from chatledger import ChatLedger

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--visitors", type=int, default=300)
    p.add_argument("--turns", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    schema = f"bench_fm_{uuid4().hex[:10]}"
    url = f"sqlite:///{tmp}/fm.db" if args.backend == "sqlite" else f"{PG_BASE}?schema={schema}"
    ledger = ChatLedger.open(url)
    first_ms: list[float] = []
    first_p50: list[float] = []
    turns_s: list[float] = []
    try:
        for r in range(args.rounds):
            lat = []
            for i in range(args.visitors):
                t0 = time.perf_counter()
                ledger.receive(f"v-{r}-{i}-{uuid4().hex[:6]}", "hi")
                lat.append((time.perf_counter() - t0) * 1000)
            first_ms.append(statistics.mean(lat))
            first_p50.append(statistics.median(lat))
            visitor = f"loyal-{r}"
            sid = ledger.receive(visitor, "hello").session_id
            t0 = time.perf_counter()
            for i in range(args.turns):
                ledger.receive(visitor, f"question {i}")
                ledger.reply(sid, f"answer {i}")
            turns_s.append(args.turns / (time.perf_counter() - t0))
            print(f"round {r}: first message mean {first_ms[-1]:.2f} ms p50 {first_p50[-1]:.2f} ms; "
                  f"existing visitor {turns_s[-1]:.0f} turns/s", flush=True)
        print(f"{args.backend}: first message mean {statistics.median(first_ms):.2f} ms, "
              f"p50 {statistics.median(first_p50):.2f} ms; existing visitor {statistics.median(turns_s):.0f} turns/s "
              f"(median of {args.rounds} rounds)")
    finally:
        ledger.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.backend == "postgres":
            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
