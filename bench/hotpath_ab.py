"""A/B of the hot-path changes of issue 2's benchmark work, in one process.

``python bench/hotpath_ab.py [--backend sqlite|postgres] [--turns 300] [--rounds 4]``

The machine is shared, so variants alternate round by round and the medians
are compared. Variant "off" switches a change off by restoring the library's
behaviour in this process only:

- ``copy``:     the generic ``copy.deepcopy`` instead of ``Aggregate.__deepcopy__``
                (and of ``AppliedPolicy.__deepcopy__``);
- ``save``:     ``Application.save``/``take_snapshot`` instead of ChatLedger's
                (snapshots rebuilt from the store; saved aggregates not cached);
- ``project``:  the library's ``project_aggregate`` (with its per-event Protocol
                ``isinstance`` assert) instead of ``unit_of_work.replay_events``.

(The SnapshotState validator change cannot be switched off at run time: compare
commits with ``git stash`` or a checkout for that one.)

Each round runs ``--turns`` turns (receive + reply) on a fresh conversation,
then cold (with and without snapshots) and warm ``session()`` reads of a
``--read-messages`` session.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from uuid import uuid4

import psycopg
from eventsourcing.application import project_aggregate
from psycopg import sql

sys.path.insert(0, os.path.dirname(__file__))
from chatledger import ChatLedger
from chatledger.application import unit_of_work
from chatledger.application.unit_of_work import UnitOfWork
from chatledger.domain.pydantic_aggregates import Aggregate
from chatledger.domain.policy import AppliedPolicy
from turns import BOT_TEXT, PG_BASE, PG_CONNINFO, USER_TEXT, build_long_session


@contextlib.contextmanager
def off(change: str) -> Iterator[None]:
    if change == "project":
        unit_of_work.replay_events = project_aggregate
        try:
            yield
        finally:
            unit_of_work.replay_events = _project
        return
    saved: list[tuple[type, str, object]] = []
    targets = {
        "copy": [(Aggregate, "__deepcopy__"), (AppliedPolicy, "__deepcopy__")],
        "save": [(UnitOfWork, "save"), (UnitOfWork, "take_snapshot")],
    }[change]
    for cls, name in targets:
        saved.append((cls, name, cls.__dict__[name]))
        delattr(cls, name)
    try:
        yield
    finally:
        for cls, name, value in saved:
            setattr(cls, name, value)


_project = unit_of_work.replay_events


def turns_per_s(ledger: ChatLedger, turns: int) -> float:
    visitor = f"ab-{uuid4().hex}"
    t0 = time.perf_counter()
    for _ in range(turns):
        turn = ledger.receive(visitor, USER_TEXT)
        ledger.reply(turn.session_id, BOT_TEXT)
    return turns / (time.perf_counter() - t0)


def read_ms(ledger: ChatLedger, sid: object, cold: bool, snapshots: bool = True) -> float:
    """Median of 3 reads."""
    cache = ledger.repository.cache
    assert cache is not None
    times = []
    store = ledger.repository.snapshot_store
    if not snapshots:
        ledger.repository.snapshot_store = None
    for _ in range(3):
        if cold:
            with contextlib.suppress(KeyError):
                cache.get(sid, evict=True)
        else:
            ledger.session(sid)
        t0 = time.perf_counter()
        ledger.session(sid)
        times.append((time.perf_counter() - t0) * 1000)
    ledger.repository.snapshot_store = store
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--read-messages", type=int, default=5000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="chatledger-ab-")
    schema = f"bench_ab_{uuid4().hex[:10]}"
    url = f"sqlite:///{tmp}/ab.db" if args.backend == "sqlite" else f"{PG_BASE}?schema={schema}"
    ledger = ChatLedger.open(url)
    try:
        sid = build_long_session(ledger, args.read_messages, "ab")
        results: dict[tuple[str, str], dict[str, list[float]]] = {}
        for _ in range(args.rounds):
            for change in ("copy", "save", "project"):
                for variant in ("on", "off"):
                    ctx = off(change) if variant == "off" else contextlib.nullcontext()
                    with ctx:
                        r = results.setdefault(
                            (change, variant), {"turns": [], "cold": [], "nosnap": [], "warm": []}
                        )
                        r["turns"].append(turns_per_s(ledger, args.turns))
                        r["cold"].append(read_ms(ledger, sid, cold=True))
                        r["nosnap"].append(read_ms(ledger, sid, cold=True, snapshots=False))
                        r["warm"].append(read_ms(ledger, sid, cold=False))
        print(f"{args.backend}: {args.rounds} alternating rounds, {args.turns} turns each; "
              f"reads of a {args.read_messages}-message session; medians")
        print(f"{'change':<9}{'variant':<9}{'turns/s':>9}{'cold read ms':>14}"
              f"{'no-snapshot ms':>16}{'warm read ms':>14}")
        for (change, variant), r in results.items():
            print(f"{change:<9}{variant:<9}{statistics.median(r['turns']):>9.0f}"
                  f"{statistics.median(r['cold']):>14.2f}{statistics.median(r['nosnap']):>16.2f}"
                  f"{statistics.median(r['warm']):>14.2f}")
    finally:
        ledger.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.backend == "postgres":
            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
