"""Each framework's own SQLite store vs chatledger behind the same framework API.

    python bench/adapters.py [--framework agents|adk|both] [--turns 50] [--trials 3]

Agents SDK: SQLiteSession vs ChatLedgerSession; ``turns`` times add_items([user, assistant])
then get_items() (what Runner does each turn). ADK: DatabaseSessionService on
``sqlite+aiosqlite`` vs ChatLedgerSessionService; create_session, then ``turns`` times
get_session, append_event(user), append_event(agent) (what Runner does each turn), after one
warm-up create_session (tables, tenant). Same
workload for both sides, in one run, on a fresh SQLite file each trial; trials alternate the
order. Prints min/median seconds and the ratio chatledger / framework store per trial.
Needs ``pip install -e ".[agents,adk]"``. The machine is shared: read the ratios, not the seconds.
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


async def adk_workload(service: Any, turns: int) -> None:
    from google.adk.events.event import Event
    from google.genai import types

    def said(author: str, text: str) -> Event:
        role = "user" if author == "user" else "model"
        return Event(author=author, invocation_id="bench",
                     content=types.Content(role=role, parts=[types.Part(text=text)]))

    created = await service.create_session(app_name="bench", user_id="u", session_id="s")
    del created
    for i in range(turns):
        session = await service.get_session(app_name="bench", user_id="u", session_id="s")
        await service.append_event(session, said("user", f"question {i} " + "x" * 60))
        await service.append_event(session, said("bot", f"answer {i} " + "y" * 300))


async def adk_own(folder: Path, turns: int) -> float:
    from google.adk.sessions.database_session_service import DatabaseSessionService

    service = DatabaseSessionService(f"sqlite+aiosqlite:///{folder}/adk.db")
    try:
        await service.create_session(app_name="bench", user_id="warm-up")  # tables, engine
        start = time.perf_counter()
        await adk_workload(service, turns)
        return time.perf_counter() - start
    finally:
        await service.close()


async def adk_ledger(folder: Path, turns: int) -> float:
    from chatledger.adapters.adk import ChatLedgerSessionService

    async with AsyncChatLedger(ChatLedger.open(f"sqlite:///{folder}/cl.db")) as led:
        service = ChatLedgerSessionService(led)
        await service.create_session(app_name="bench", user_id="warm-up")  # tenant, read models
        start = time.perf_counter()
        await adk_workload(service, turns)
        return time.perf_counter() - start


SIDES = {
    "agents": (("SQLiteSession", sdk), ("ChatLedgerSession", ledger)),
    "adk": (("DatabaseSessionService", adk_own), ("ChatLedgerSessionService", adk_ledger)),
}


def compare(framework: str, turns: int, trials: int) -> None:
    (own_name, own), (cl_name, cl) = SIDES[framework]
    own_s, cl_s, ratios = [], [], []
    for trial in range(trials):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if trial % 2:
                b = asyncio.run(cl(folder, turns))
                a = asyncio.run(own(folder, turns))
            else:
                a = asyncio.run(own(folder, turns))
                b = asyncio.run(cl(folder, turns))
        own_s.append(a)
        cl_s.append(b)
        ratios.append(b / a)
        print(f"{framework} trial {trial}: {own_name} {a:.3f}s  {cl_name} {b:.3f}s  ratio {b / a:.1f}")
    for name, xs in ((own_name, own_s), (cl_name, cl_s), ("ratio", ratios)):
        print(f"{framework} {name}: min {min(xs):.3f} median {statistics.median(xs):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["agents", "adk", "both"], default="both")
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    for framework in ("agents", "adk") if args.framework == "both" else (args.framework,):
        compare(framework, args.turns, args.trials)


if __name__ == "__main__":
    main()
