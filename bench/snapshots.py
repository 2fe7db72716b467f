"""One conversation on SQLite, as ratios to raw sqlite3 in the same run (issue 12).

Run ``python bench/snapshots.py`` (``--help`` for the knobs). Each repeat:

1. chatledger: one visitor, ``--messages`` messages, alternating
   ``ledger.receive`` (user, ~80 chars) and ``ledger.reply`` (bot, ~330 chars),
   each call its own durable commit (eventsourcing's WAL connection,
   ``synchronous=FULL``), every call timed;
2. raw sqlite3: the very same message rows (copied byte for byte from the
   ledger's event table) inserted into an identical table, one
   ``BEGIN; INSERT; COMMIT`` per message, same durability;
3. the figures, as ratios to the raw run of the same repeat:

   * ``append``: ledger messages/s / raw messages/s (target >= 0.6);
   * ``p99``: ledger p99 per call / raw p99 per commit (target <= 3);
   * ``amortized``: mean call time over messages (n/2, n] (which holds one
     snapshot at any geometric cadence; every snapshot at a fixed one) /
     mean call time over messages 11..30 (target <= 1.2 at n = 5,000);
   * ``cold``: ``ledger.session(id)`` with an empty aggregate cache / a raw
     ``SELECT`` of the session's rows (target <= 2); ``cold_read_all``: the
     same plus reading every message's text (each decrypted and validated) /
     the raw ``SELECT`` plus ``json.loads`` of every row (alternated with the
     raw reads, median of the per-pair ratios; raw holds only the message rows);
   * ``storage``: the ledger file after a WAL checkpoint / the UTF-8 bytes of
     the message texts (target <= 3); raw's own file is printed beside it.

Prints min and median of each ratio over ``--repeats``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any
from uuid import UUID

from chatledger import ChatLedger

USER_TEXT = "Hi, I ordered a blue jacket last week and it has not arrived yet. Where is it now?"
BOT_TEXT = (
    "Sorry about that! I have checked order A-17 for you: it left our warehouse in Leeds "
    "yesterday afternoon and is now with the courier, who expects to deliver it tomorrow "
    "between 9am and 1pm. You will get a text message with a one-hour window in the morning. "
    "If it does not arrive by Friday, reply here and I will send a replacement straight away "
    "or refund the full amount, whichever you prefer."
)
MESSAGE_TOPICS = ("Session.MessageReceived", "Session.MessageSent")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def connect(path: str) -> sqlite3.Connection:
    # As eventsourcing's pool connects: autocommit with explicit BEGIN, WAL, synchronous FULL.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def file_size(path: str) -> int:
    conn = connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def ledger_run(path: str, messages: int, **settings: Any) -> dict[str, Any]:
    ledger = ChatLedger.open(f"sqlite:///{path}", **settings)
    perf = time.perf_counter
    lat: list[float] = []
    try:
        t_start = perf()
        t0 = perf()
        turn = ledger.receive("bench-visitor", USER_TEXT)
        lat.append(perf() - t0)
        sid = turn.session_id
        for i in range(1, messages):
            t0 = perf()
            if i % 2:
                ledger.reply(sid, BOT_TEXT)
            else:
                ledger.receive("bench-visitor", USER_TEXT)
            lat.append(perf() - t0)
        total = perf() - t_start
    finally:
        ledger.close()
    return {"sid": sid, "lat": lat, "total": total}


def raw_run(ledger_path: str, raw_path: str, sid: UUID) -> dict[str, Any]:
    ChatLedger.open(f"sqlite:///{raw_path}").close()  # the identical events table
    src = connect(ledger_path)
    rows = [
        r for r in src.execute(
            "SELECT originator_id, originator_version, topic, state FROM stored_events "
            "WHERE originator_id=? ORDER BY originator_version", (sid.hex,)
        ) if r[2].endswith(MESSAGE_TOPICS)
    ]
    src.close()
    conn = connect(raw_path)
    perf = time.perf_counter
    lat = []
    t_start = perf()
    for row in rows:
        t0 = perf()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO stored_events VALUES (?,?,?,?)", row)
        conn.execute("COMMIT")
        lat.append(perf() - t0)
    total = perf() - t_start

    conn.close()
    return {"lat": lat, "total": total, "rows": len(rows)}


def read_pairs(ledger_path: str, raw_path: str, sid: UUID, messages: int, pairs: int = 7) -> dict[str, float]:
    """Cold reads of the session and raw SELECTs of its rows, alternated (so
    both see the same machine load); the median of the per-pair ratios."""
    ledger = ChatLedger.open(f"sqlite:///{ledger_path}")
    conn = connect(raw_path)
    perf = time.perf_counter
    query = (
        "SELECT originator_id, originator_version, topic, state FROM stored_events "
        "WHERE originator_id=? ORDER BY originator_version"
    )
    cache = ledger.repository.cache

    def evict() -> None:
        if cache is not None:
            with contextlib.suppress(KeyError):
                cache.get(sid, evict=True)

    cold, cold_all, raw, raw_json = [], [], [], []
    try:
        ledger.session(sid)  # the pool, the key
        for _ in range(pairs):
            evict()
            t0 = perf()
            state = ledger.session(sid)
            cold.append(perf() - t0)
            assert len(state.messages) == messages
            t0 = perf()
            rows = conn.execute(query, (sid.hex,)).fetchall()
            raw.append(perf() - t0)
            assert len(rows) == messages
            evict()
            t0 = perf()
            texts = [m.text for m in ledger.session(sid).messages]
            cold_all.append(perf() - t0)
            assert len(texts) == messages
            t0 = perf()
            decoded = [json.loads(r[3]) for r in conn.execute(query, (sid.hex,))]
            raw_json.append(perf() - t0)
            assert len(decoded) == messages
    finally:
        ledger.close()
        conn.close()
    return {
        "cold": statistics.median(c / r for c, r in zip(cold, raw, strict=True)),
        "cold_read_all": statistics.median(c / r for c, r in zip(cold_all, raw_json, strict=True)),
        "cold_ms": min(cold) * 1000,
        "raw_select_ms": min(raw) * 1000,
    }


def one_repeat(workdir: str, messages: int, settings: dict[str, Any]) -> dict[str, float]:
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    lpath, rpath = os.path.join(workdir, "ledger.db"), os.path.join(workdir, "raw.db")
    led = ledger_run(lpath, messages, **settings)
    raw = raw_run(lpath, rpath, led["sid"])
    reads = read_pairs(lpath, rpath, led["sid"], messages)
    lat = led["lat"]
    payload = sum(len((BOT_TEXT if i % 2 else USER_TEXT).encode()) for i in range(messages))
    head = statistics.mean(lat[10:30])
    tail = statistics.mean(lat[messages // 2 :])
    return {
        "append": (messages / led["total"]) / (raw["rows"] / raw["total"]),
        "p99": pct(lat, 0.99) / pct(raw["lat"], 0.99),
        "amortized": tail / head,
        "cold": reads["cold"],
        "cold_read_all": reads["cold_read_all"],
        "storage": file_size(lpath) / payload,
        "raw_storage": file_size(rpath) / payload,
        "ledger_ms_per_msg": led["total"] / messages * 1000,
        "raw_ms_per_msg": raw["total"] / raw["rows"] * 1000,
        "cold_ms": reads["cold_ms"],
        "raw_select_ms": reads["raw_select_ms"],
        "max_call_ms": max(lat) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--snapshot-interval", type=int, default=None)
    args = ap.parse_args(argv)
    settings = {} if args.snapshot_interval is None else {"snapshot_interval": args.snapshot_interval}
    base = tempfile.mkdtemp(prefix="chatledger-snapbench-")
    results = []
    try:
        for r in range(args.repeats):
            res = one_repeat(os.path.join(base, str(r)), args.messages, settings)
            results.append(res)
            print(f"repeat {r}: " + ", ".join(f"{k}={v:.3g}" for k, v in res.items()), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{args.messages} messages, one conversation, SQLite, {args.repeats} repeats (min / median):")
    for key in results[0]:
        values = [r[key] for r in results]
        print(f"  {key:18} {min(values):8.3f} / {statistics.median(values):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
