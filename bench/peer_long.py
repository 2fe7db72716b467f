"""A long conversation (SQLite), per contender: cost per call early and late, cold load, storage.

For each contender, on a fresh file, one conversation:

1. ``window`` messages one call each, timed (the *early* window: messages 0..window-1);
2. filled up to ``messages`` messages in batches of 100 per commit (each contender's own
   batch write: chatledger's domain commands + ``save``, which takes its snapshots as
   usual; eventsourcing's aggregate + ``save``; ``add_items`` of 100; ``executemany``);
3. ``window`` more messages one call each, timed (the *late* window, from message
   ``messages`` on): amortized cost = mean late ÷ mean early, snapshots included;
4. a cold load of the whole conversation (chatledger: cache evicted, ``session()``;
   eventsourcing: an application without cache, ``repository.get``; agents:
   ``get_items()``; raw: ``SELECT role, body … ORDER BY seq``), median of ``repeat``;
5. the file's size after a WAL checkpoint ÷ the UTF-8 bytes of the messages' text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from peer_common import payload_bytes, pct, text_of, timed
from peer_contenders import (
    AgentsContender,
    ChatLedgerContender,
    Conversations,
    EventsourcingContender,
    eventsourcing_env,
    make,
)
from peer_scenarios import remove_db

BATCH = 100


def timed_calls(write: Any, first: int, n: int) -> list[float]:
    out, perf = [], time.perf_counter
    for k in range(first, first + n):
        t0 = perf()
        write(k)
        out.append(perf() - t0)
    return out


def fill(contender: Any, conversation: str, state: dict[str, Any], first: int, last: int) -> None:
    """Messages ``first``..``last``-1 of ``conversation``, ``BATCH`` per commit."""
    for lo in range(first, last, BATCH):
        ks = range(lo, min(last, lo + BATCH))
        if isinstance(contender, ChatLedgerContender):
            ledger = contender.ledger
            session = ledger.get_session(state["sid"])
            for k in ks:
                role, text = text_of(k)
                now = datetime.now(UTC)
                session.receive(text, at=now) if role == "user" else session.send(text, at=now)
            ledger.save(session)
        elif isinstance(contender, EventsourcingContender):
            app = contender.app
            conversation_agg = app.repository.get(state["id"])
            for k in ks:
                conversation_agg.add_message(*text_of(k))
            app.save(conversation_agg)
        elif isinstance(contender, AgentsContender):
            items = [{"role": "user" if text_of(k)[0] == "user" else "assistant", "content": text_of(k)[1]}
                     for k in ks]
            contender.loop().run_until_complete(state["session"].add_items(items))
        else:
            conn = contender.connect()
            with contextlib.closing(conn):
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, julianday('now'))",
                                 [(conversation, k, *text_of(k)) for k in ks])
                conn.execute("COMMIT")
            contender.conns.remove(conn)


def cold_loader(contender: Any, path: str, conversation: str, state: dict[str, Any]) -> Any:
    """A function that loads the whole conversation from the store, no cache, and its length."""
    if isinstance(contender, ChatLedgerContender):
        ledger, sid = contender.ledger, state["sid"]

        def load() -> int:
            cache = ledger.repository.cache
            if cache is not None:
                with contextlib.suppress(KeyError):
                    cache.get(sid, evict=True)
            return len(ledger.session(sid).messages)

        return load
    if isinstance(contender, EventsourcingContender):
        app = Conversations(env=eventsourcing_env(path, cache=False))
        state["closers"].append(app.close)
        return lambda: len(app.messages(state["id"]))
    if isinstance(contender, AgentsContender):
        loop = asyncio.new_event_loop()
        state["closers"].append(loop.close)
        return lambda: len(loop.run_until_complete(state["session"].get_items()))
    conn = sqlite3.connect(path)
    state["closers"].append(conn.close)
    query = "SELECT role, body FROM messages WHERE conversation = ? ORDER BY seq"
    return lambda: len(conn.execute(query, (conversation,)).fetchall())


def file_bytes(path: str) -> int:
    conn = sqlite3.connect(path)
    with contextlib.closing(conn):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def long_run(workdir: str, name: str, messages: int, window: int, repeat: int, tag: str) -> dict[str, Any]:
    path = os.path.join(workdir, f"long-{name}-{tag}.db")
    remove_db(path)
    contender = make(name, path)
    conversation = f"long-{tag}"
    state: dict[str, Any] = {"closers": []}
    try:
        write = contender.writer(conversation)
        early = timed_calls(write, 0, window)
        if isinstance(contender, ChatLedgerContender):
            state["sid"] = write_state(write, "sid")
        elif isinstance(contender, EventsourcingContender):
            state["id"] = write_state(write, "id")
        elif isinstance(contender, AgentsContender):
            state["session"] = contender.sessions[-1]
        fill(contender, conversation, state, window, messages)
        late = timed_calls(write, messages, window)
        total = messages + window
        load = cold_loader(contender, path, conversation, state)
        got = load()
        assert got == total, (name, got, total)
        cold = timed(load, repeat)
    finally:
        for close in state["closers"]:
            close()
        contender.close()
    size = file_bytes(path)
    remove_db(path)
    return {
        "messages": total, "early_mean_ms": statistics.fmean(early) * 1e3,
        "late_mean_ms": statistics.fmean(late) * 1e3, "late_p99_ms": pct(late, 0.99) * 1e3,
        "amortized": statistics.fmean(late) / statistics.fmean(early),
        "cold_ms": cold * 1e3, "bytes": size, "storage": size / payload_bytes(total),
    }


def write_state(write: Any, key: str) -> Any:
    """The conversation id a contender's writer keeps in its closure."""
    for cell in write.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, dict) and key in value:
            return value[key]
    raise LookupError(key)

