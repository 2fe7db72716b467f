"""The console's reads in-process, new path beside old on one store (issue 15, docs/benchmarks.md).

    python bench/console_reads.py           # the 100,000-session store of bench/console.py (cached)

Prints min / median of ``--repeat`` runs: ``analytics()``; the timeout curve as one
``timeout_curve`` query beside 8 x ``resessionize``; ``verify()`` (full) beside
``verify(incremental=True)`` after it. Judge by the ratios: the box is shared.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from console import DAYS, POLICY, T0, TIMEOUTS  # bench/console.py: the same store

from chatledger import ChatLedger, ManualClock


def timed(fn: Callable[[], Any], repeat: int) -> str:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return f"min {min(runs) * 1000:9.1f} ms  median {statistics.median(runs) * 1000:9.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    db = Path(__file__).parent / ".cache" / f"console-{args.sessions}.db"
    if not db.exists():
        raise SystemExit(f"run bench/console.py --sessions {args.sessions} first (it seeds {db})")
    clock = ManualClock(T0 + timedelta(days=DAYS, hours=1))
    curve = [timedelta(minutes=m) for m in TIMEOUTS]
    with ChatLedger.open(f"sqlite:///{db}", policy=POLICY, clock=clock) as ledger:
        ledger.catch_up()
        print("analytics()                     ", timed(ledger.analytics, args.repeat))
        print("timeout_curve(8 timeouts)       ", timed(lambda: ledger.timeout_curve(curve), args.repeat))
        print("8 x resessionize                ", timed(lambda: [ledger.resessionize(t) for t in curve], 1))
        print("verify() (full)                 ", timed(ledger.verify, 1))
        print("verify(incremental=True)        ", timed(lambda: ledger.verify(incremental=True), args.repeat))


if __name__ == "__main__":
    main()
