"""Tenants (issue 13): what a tenant costs a turn, and whether 1,000 tenants in one
store behave as one tenant does. Ratios within one run, on one machine.

    python bench/tenants.py                                  # SQLite files in a temp dir
    python bench/tenants.py --database postgresql://postgres@127.0.0.1:5432/test

Each repeat measures, in alternating blocks on the same store (so drift and the
neighbours' load hit both sides alike):

1. ``tenant/default``: a turn (``receive`` + ``reply``, a durable commit each) on
   a tenant handle (``ledger.tenant("acme")``: scoped visitor ids, scoped key
   owner, tenant checks) / the same turn on the default tenant (the code path of
   a store without tenants: unscoped ids, the same checks);
2. ``1000 tenants/1``: turns spread round-robin over 1,000 tenant handles of one
   ledger (50 visitors each) / as many turns in one tenant over as many
   conversations (1,000 visitors): 1,000 live conversations on either side;
3. ``sweep 1000/1``: ``sweep(all_tenants=True)`` of ``--sessions`` idle sessions
   spread over 1,000 tenants / the same number in one tenant (each in a fresh
   store, seeded with the domain's own commands, ``--batch`` per transaction);
   ``tenant sweep/1``: one tenant's ``sweep()`` of its 1/1000 of them, in the
   1,000-tenant store / a sweep of as many sessions (``limit=``) in the
   one-tenant store;
4. the memory of 1,000 handles (``tracemalloc``), in KiB per handle;
5. with ``--before PYTHON`` (the interpreter of a checkout from before tenants,
   e.g. ``/work/main/.venv/bin/python``): ``after tenant/before`` and ``after
   default/before``, the same turns (a fresh SQLite store each, 50 warm-up turns,
   then ``--turns`` timed inside the process) run by this code on a tenant handle
   and on the default tenant / by the older code, the three alternated as
   subprocesses, median of ``--blocks`` per-block ratios.

Prints min and median of each ratio over ``--repeats``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from chatledger import ChatLedger, ManualClock, SessionPolicy
from chatledger.domain.ids import uuid7
from chatledger.domain.policy import AppliedPolicy
from chatledger.domain.session import Session

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = SessionPolicy(idle_timeout=timedelta(minutes=30))
USER_TEXT = "Where is my order? It was supposed to arrive yesterday, tracking says nothing."
BOT_TEXT = "Let me check that for you. " * 4


@contextmanager
def store(database: str | None, base: str, name: str) -> Iterator[ChatLedger]:
    if database is None:
        url = f"sqlite:///{os.path.join(base, name)}.db"
        schema = None
    else:
        schema = f"bench_{name}_{uuid4().hex[:8]}"
        url = f"{database}{'&' if '?' in database else '?'}schema={schema}"
    ledger = ChatLedger.open(url, policy=POLICY, clock=ManualClock(T0))
    try:
        yield ledger
    finally:
        ledger.close()
        if schema is not None:
            import psycopg

            with psycopg.connect(database.split("?")[0], autocommit=True) as conn:  # type: ignore[union-attr]
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


def turns(
    handles: Callable[[int], ChatLedger], n: int, offset: int, visitor: Callable[[int], str]
) -> float:
    """Seconds for ``n`` turns; turn ``i`` on ``handles(i)``, by ``visitor(i)``."""
    started = time.perf_counter()
    for i in range(offset, offset + n):
        ledger = handles(i)
        turn = ledger.receive(visitor(i), USER_TEXT)
        ledger.reply(turn.session_id, BOT_TEXT)
    return time.perf_counter() - started


def alternate(
    a: Callable[[int, int], float], b: Callable[[int, int], float], blocks: int, size: int
) -> float:
    """Median over ``blocks`` of the per-pair ratio a/b, the two sides alternated."""
    ratios = []
    for k in range(blocks):
        first, second = (a, b) if k % 2 == 0 else (b, a)
        x = first(size, k * size)
        y = second(size, k * size)
        ta, tb = (x, y) if k % 2 == 0 else (y, x)
        ratios.append(ta / tb)
    return statistics.median(ratios)


def seed(ledger: ChatLedger, sessions: int, tenants: int, batch: int) -> None:
    policy = AppliedPolicy.of(POLICY)
    pending = []
    for i in range(sessions):
        at = T0 + timedelta(milliseconds=i)
        session = Session.start(
            session_id=uuid7(at), visitor_id=f"v-{i}", at=at, policy=policy,
            tenant="default" if tenants == 1 else f"t{i % tenants}",
        )  # fmt: skip
        session.receive("hi", at=at)
        pending.append(session)
        if len(pending) == batch:
            ledger.save(*pending)
            pending = []
    if pending:
        ledger.save(*pending)
    ledger.catch_up()


def sweep_seconds(ledger: ChatLedger, now: datetime, **kw: object) -> tuple[float, int]:
    started = time.perf_counter()
    done = ledger.sweep(now, **kw)  # type: ignore[arg-type]
    return time.perf_counter() - started, done


def one_repeat(
    database: str | None, base: str, r: int, args: argparse.Namespace
) -> dict[str, float]:
    out: dict[str, float] = {}
    with store(database, base, f"turns{r}") as ledger:
        acme = ledger.tenant("acme")
        many = [ledger.tenant(f"t{i}") for i in range(1000)]
        # 50 conversations, continued turn after turn, on either side.
        fifty = lambda i: f"v-{i % 50}"
        turns(lambda i: ledger, 50, 0, fifty)  # warm up: tables, caches, pool, the 50 sessions
        turns(lambda i: acme, 50, 0, fifty)
        tenant_side = lambda n, off: turns(lambda i: acme, n, off, fifty)
        default_side = lambda n, off: turns(lambda i: ledger, n, off, fifty)
        out["tenant/default"] = alternate(tenant_side, default_side, args.blocks, args.turns)
        # 1,000 conversations on either side: 50 visitors in each of 1,000 tenants' handles
        # (turn i: tenant i % 1000), or 1,000 visitors of one tenant (turn i: visitor i % 1000).
        many_side = lambda n, off: turns(lambda i: many[i % 1000], n, off, fifty)
        one_side = lambda n, off: turns(lambda i: many[0], n, off, lambda i: f"w-{i % 1000}")
        for i in range(1000):  # every conversation started once before timing
            many_side(1, i)
            one_side(1, i)
        out["1000 tenants/1"] = alternate(many_side, one_side, args.blocks, args.turns)

    due = T0 + timedelta(days=1)
    share = args.sessions // 1000
    timed: dict[str, tuple[float, int]] = {}
    for layout in ("one", "spread") if r % 2 == 0 else ("spread", "one"):  # alternate the order
        with store(database, base, f"sweep_{layout}_{r}") as ledger:
            seed(ledger, args.sessions, 1 if layout == "one" else 1000, args.batch)
            if layout == "one":  # the work of one tenant's sweep: as many sessions, one tenant
                timed["small one"] = sweep_seconds(ledger, due, limit=share, all_tenants=True)
            else:  # one tenant's sweep, its 1/1000 of the store
                timed["small spread"] = sweep_seconds(ledger.tenant("t7"), due)
            timed[layout] = sweep_seconds(ledger, due, all_tenants=True)
    assert timed["one"][1] == timed["spread"][1] == args.sessions - share, timed
    assert timed["small one"][1] == timed["small spread"][1] == share, timed
    out["sweep 1000/1"] = timed["spread"][0] / timed["one"][0]
    out["tenant sweep/1"] = timed["small spread"][0] / timed["small one"][0]

    with store(database, base, f"handles{r}") as ledger:
        ledger.tenant("warm")
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        handles = [ledger.tenant(f"h{i}") for i in range(1000)]
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        out["KiB per handle"] = grown / 1024 / len(handles)
    return out


WORKER = """
import sys, tempfile, time
from chatledger import ChatLedger
n, tenant = int(sys.argv[1]), sys.argv[2]
with tempfile.TemporaryDirectory() as d:
    kw = {} if tenant == "-" else {"tenant": tenant}
    with ChatLedger.open(f"sqlite:///{d}/chat.db", **kw) as ledger:
        def run(count, offset):
            for i in range(offset, offset + count):
                t = ledger.receive(f"v-{i % 50}", USER_TEXT)
                ledger.reply(t.session_id, BOT_TEXT)
        run(50, 0)
        started = time.perf_counter()
        run(n, 50)
        print(time.perf_counter() - started)
""".replace("USER_TEXT", repr(USER_TEXT)).replace("BOT_TEXT", repr(BOT_TEXT))


def before_after(before: str, turns_: int, blocks: int) -> dict[str, float]:
    """``after tenant/before`` and ``after default/before``: see the module docstring."""
    import subprocess

    variants = {
        "before": (before, "-"),
        "tenant": (sys.executable, "acme"),
        "default": (sys.executable, "-"),
    }
    ratios: dict[str, list[float]] = {"after tenant/before": [], "after default/before": []}
    for k in range(blocks):
        seconds = {}
        names = list(variants) if k % 2 == 0 else list(reversed(variants))
        for name in names:
            python, tenant = variants[name]
            done = subprocess.run(
                [python, "-c", WORKER, str(turns_), tenant], capture_output=True, text=True, check=True,
                cwd=tempfile.gettempdir(),
            )  # fmt: skip
            seconds[name] = float(done.stdout.strip().splitlines()[-1])
        ratios["after tenant/before"].append(seconds["tenant"] / seconds["before"])
        ratios["after default/before"].append(seconds["default"] / seconds["before"])
    return {k: statistics.median(v) for k, v in ratios.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", default=None, help="PostgreSQL URL (default: SQLite files)")
    ap.add_argument("--turns", type=int, default=100, help="turns per block")
    ap.add_argument("--blocks", type=int, default=6, help="alternated blocks per comparison")
    ap.add_argument("--sessions", type=int, default=20_000, help="idle sessions to sweep")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", default=None, help="python of a checkout before tenants (A/B)")
    ap.add_argument("--only-before", action="store_true", help="only the --before A/B")
    args = ap.parse_args(argv)
    base = tempfile.mkdtemp(prefix="chatledger-tenantbench-")
    results = []
    try:
        for r in range(args.repeats):
            res = {} if args.only_before else one_repeat(args.database, base, r, args)
            if args.before:
                res.update(before_after(args.before, args.turns * 2, args.blocks))
            results.append(res)
            print(f"repeat {r}: " + ", ".join(f"{k}={v:.3g}" for k, v in res.items()), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    where = "PostgreSQL" if args.database else "SQLite"
    print(f"\n{where}, {args.turns} turns x {args.blocks} blocks, {args.sessions} sessions swept, "
          f"{args.repeats} repeats (min / median):")  # fmt: skip
    for key in results[0]:
        values = [r[key] for r in results]
        print(f"  {key:18} {min(values):8.3f} / {statistics.median(values):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
