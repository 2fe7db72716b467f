"""The Agents SDK's own SQLiteSession vs ChatLedgerSession behind the same Session API.

    python bench/adapters.py [--turns 50] [--trials 3]

Same workload for both, in one run: ``turns`` times add_items([user, assistant]) then
get_items() (what Runner does each turn), on a fresh SQLite file each trial; trials alternate
the order. Prints min/median seconds and the ratio chatledger / SQLiteSession per trial.
Needs ``pip install -e ".[agents]"``. The machine is shared: read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agents import SQLiteSession

from chatledger import ChatLedger
from chatledger.adapters.agents import ChatLedgerSession
from chatledger.aio import AsyncChatLedger


async def workload(session: Any, turns: int) -> None:
    for i in range(turns):
        await session.add_items(
            [
                {"role": "user", "content": f"question {i} " + "x" * 60},
                {"role": "assistant", "content": f"answer {i} " + "y" * 300},
            ]
        )
        await session.get_items()


async def sdk(folder: Path, turns: int) -> float:
    session = SQLiteSession("bench", folder / "sdk.db")
    start = time.perf_counter()
    await workload(session, turns)
    elapsed = time.perf_counter() - start
    session.close()
    return elapsed


async def ledger(folder: Path, turns: int) -> float:
    async with AsyncChatLedger(ChatLedger.open(f"sqlite:///{folder}/cl.db")) as led:
        start = time.perf_counter()
        await workload(ChatLedgerSession("bench", led), turns)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    sdk_s, cl_s, ratios = [], [], []
    for trial in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if trial % 2:
                b = asyncio.run(ledger(folder, args.turns))
                a = asyncio.run(sdk(folder, args.turns))
            else:
                a = asyncio.run(sdk(folder, args.turns))
                b = asyncio.run(ledger(folder, args.turns))
        sdk_s.append(a)
        cl_s.append(b)
        ratios.append(b / a)
        print(
            f"trial {trial}: SQLiteSession {a:.3f}s  ChatLedgerSession {b:.3f}s  ratio {b / a:.1f}"
        )
    for name, xs in (("SQLiteSession", sdk_s), ("ChatLedgerSession", cl_s), ("ratio", ratios)):
        print(f"{name}: min {min(xs):.3f} median {statistics.median(xs):.3f}")


if __name__ == "__main__":
    main()
