"""Benchmark the web console (issue 15): each page's p95 over HTTP beside the API calls behind it.

    python bench/console.py                 # 100,000 sessions on a SQLite file (cached)
    python bench/console.py --sessions 20000 --repeat 10

The store: ``--sessions`` sessions over 10 days (a user message and a bot reply each, one visitor
each: a visitor's content key is made by its first write, so bulk saves reuse none), written in bulk (``Session.start`` + ``receive`` + ``send``, 1,000
sessions per ``ledger.save``), read models caught up, cached under ``bench/.cache`` (git-ignored)
and reused. Then ``chatledger serve``'s app runs on uvicorn (127.0.0.1); each page is fetched
``--repeat`` times with an analyst's (auditor's) cookie, and the same ledger calls the page makes
are timed in-process: the ratio is what the HTTP + HTML layer adds. Target: p95 <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from chatledger import ChatLedger, ManualClock, SessionPolicy
from chatledger.domain.ids import uuid7
from chatledger.domain.policy import AppliedPolicy
from chatledger.domain.session import Session
from chatledger.entrypoints.http.app import create_app

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 10
POLICY = SessionPolicy(idle_timeout=timedelta(minutes=30))
TIMEOUTS = (5, 10, 15, 20, 30, 45, 60, 120)


def seed(url: str, sessions: int, batch: int = 1000) -> str:
    """Write the store; return a session id to replay."""
    step = timedelta(days=DAYS) / sessions
    with ChatLedger.open(url, policy=POLICY, clock=ManualClock(T0 + timedelta(days=DAYS, hours=1))) as ledger:
        policy = AppliedPolicy.of(ledger.policy)
        first = ""
        for start in range(0, sessions, batch):
            made = []
            for i in range(start, min(sessions, start + batch)):
                at = T0 + i * step
                s = Session.start(session_id=uuid7(at), visitor_id=f"b-{i}", at=at, policy=policy,
                                  channel=("web", "whatsapp")[i % 2])
                s.receive(f"question {i} about my order", at=at)
                s.send(f"answer {i}", role="bot", at=at + timedelta(seconds=4 + i % 30))
                made.append(s)
            first = first or str(made[0].id)
            ledger.save(*made)
        ledger.catch_up()
        return first


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    cache = Path(__file__).parent / ".cache"
    cache.mkdir(exist_ok=True)
    db, sid_file = cache / f"console-{args.sessions}.db", cache / f"console-{args.sessions}.sid"
    if not db.exists():
        t = time.perf_counter()
        sid = seed(f"sqlite:///{db}.tmp", args.sessions)
        shutil.move(f"{db}.tmp", db)
        sid_file.write_text(sid)
        print(f"seeded {args.sessions:,} sessions in {time.perf_counter() - t:.1f} s -> {db}")
    sid, url = sid_file.read_text(), f"sqlite:///{db}"
    clock = ManualClock(T0 + timedelta(days=DAYS, hours=1))
    with ChatLedger.open(url, policy=POLICY, clock=clock) as ledger:
        t = time.perf_counter()
        if caught := ledger.catch_up():  # a read model added since the store was cached
            print(f"caught up {caught:,} events in {time.perf_counter() - t:.1f} s")
        keys = {s: ledger.api_keys.create(f"bench {s}", [s])[1] for s in ("analyst", "auditor")}
        day = clock() - timedelta(days=1)
        last = max(e.occurred_at for e in ledger.session_events(sid))
        api: dict[str, Callable[[], Any]] = {
            "/console/": lambda: (ledger.analytics(), ledger.timeout_curve([timedelta(minutes=m) for m in TIMEOUTS])),
            "/console/sessions": lambda: ledger.transcript(start=day),
            f"/console/sessions/{sid}": lambda: (ledger.session_events(sid), ledger.session(sid, as_of=last)),
            "/console/audit": lambda: ledger.verify(incremental=True),
        }
        # The audit page's first check in a process is a full one (nothing verified yet): timed
        # apart as "cold"; the repeats are incremental (the seals verified by it are trusted).
        cold = {"api": timed(api["/console/audit"], 1)[0]}
        api_times = {page: timed(fn, args.repeat) for page, fn in api.items()}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(url, clock=clock, policy=POLICY), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.sessions:,} sessions, SQLite, "
          f"repeat {args.repeat}")
    print(f"{'page':<52} {'p95 ms':>8} {'median':>8} {'API p95':>8} {'ratio':>6}")
    try:
        for page in api:
            scope = "auditor" if "audit" in page else "analyst"
            with httpx.Client(base_url=base, timeout=900) as http:
                assert http.post("/console/login", data={"key": keys[scope]}).status_code == 303

                def get(page: str = page, http: httpx.Client = http) -> None:
                    r = http.get(page)
                    assert r.status_code == 200, (page, r.status_code)

                if "audit" in page:
                    cold["page"] = timed(get, 1)[0]
                pages = timed(get, args.repeat)
            a = p95(api_times[page])
            print(f"{page:<52} {p95(pages) * 1000:8.1f} {statistics.median(pages) * 1000:8.1f} "
                  f"{a * 1000:8.1f} {p95(pages) / a:6.2f}")
        print(f"{'/console/audit, first fetch (a full check)':<52} {cold['page'] * 1000:8.1f} {'':>8} "
              f"{cold['api'] * 1000:8.1f} {cold['page'] / cold['api']:6.2f}")
    finally:
        server.should_exit = True
        thread.join(30)


if __name__ == "__main__":
    main()
