"""Cost of keys outside the database: new visitors' first messages and existing turns,
with no master key, a master key, and master key + key vault (SQLite, one process).

``python bench/key_providers.py [--visitors 300] [--turns 300] [--rounds 5]``

Each round and configuration opens a fresh store; the three configurations
alternate within a round (same load on this shared machine). Reports min and
median per operation, and each configuration's ratio to "none" in the same round.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from chatledger import ChatLedger
from chatledger.infrastructure.key_providers import new_master_key

MASTER = new_master_key("bench")


def run(kind: str, folder: str, visitors: int, turns: int) -> tuple[float, float]:
    options: dict[str, str] = {}
    if kind != "none":
        options["master_key"] = MASTER
    if kind == "vault":
        options["key_vault"] = f"{folder}/vault"
        options["key_vault_create"] = "true"
    with ChatLedger.open(f"sqlite:///{folder}/chat.db", **options) as ledger:
        started = time.perf_counter()
        for i in range(visitors):
            ledger.receive(f"v-{i}", "hi")
        first = (time.perf_counter() - started) / visitors
        sid = ledger.receive("regular", "hello").session_id
        started = time.perf_counter()
        for i in range(turns):
            ledger.receive("regular", f"turn {i}", session_id=sid)
        turn = (time.perf_counter() - started) / turns
    return first, turn


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--visitors", type=int, default=300)
    p.add_argument("--turns", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    kinds = ("none", "master", "vault")
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            folder = tempfile.mkdtemp()
            try:
                results[kind].append(run(kind, folder, args.visitors, args.turns))
            finally:
                shutil.rmtree(folder)
    print(
        f"{'config':8} {'first msg min/med µs':>22} {'ratio':>6} {'turn min/med µs':>18} {'ratio':>6}"
    )
    for kind in kinds:
        firsts = [r[0] * 1e6 for r in results[kind]]
        turns = [r[1] * 1e6 for r in results[kind]]
        r_first = statistics.median(
            a[0] / b[0] for a, b in zip(results[kind], results["none"], strict=True)
        )
        r_turn = statistics.median(
            a[1] / b[1] for a, b in zip(results[kind], results["none"], strict=True)
        )
        print(
            f"{kind:8} {min(firsts):9.0f} / {statistics.median(firsts):9.0f} {r_first:6.2f} "
            f"{min(turns):7.0f} / {statistics.median(turns):7.0f} {r_turn:6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
