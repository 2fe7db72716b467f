"""Rebuild throughput of every projection, against reading the same events raw.

    python bench/rebuild.py --events 1000000            # SQLite file and PostgreSQL
    python bench/rebuild.py --events 100000 --only sqlite

Generates a realistic history (visitors with several sessions, bot replies,
user-scoped slots, tasks, timeouts, explicit ends, identity links) straight
from the domain aggregates with explicit times. It is written as production
writes it: a discrete-event simulation over 28 days in which visitors'
conversations interleave and each action is appended at its business time, so
log position and time increase together (session ids are UUIDv7 of their start
time, so tables keyed by session id get near-sequential inserts, as in
production). Actions are saved in windows of about 200 events, many aggregates
per transaction. Then, in the same run, it times

- ``raw``: ``select_notifications`` over the whole log (records only),
- ``raw+decode``: the same plus turning each record into its pydantic event,
- ``rebuild <name>``: ``ProjectionRunner.rebuild`` of each read model,
- ``rebuild all N together``: ``ProjectionRunner.rebuild_many`` of all of them in one
  pass (each batch read and decoded once); events/s counts log events, each
  applied to every read model,
- ``rebuild --shadow N``: ``ProjectionRunner.rebuild_shadow`` of all of them (new
  tables while the live ones serve, then the swap),

and prints events/s and the ratio of each rebuild to the raw read.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from chatledger import ChatLedger, SessionPolicy
from chatledger.domain.ids import uuid7
from chatledger.domain.policy import AppliedPolicy
from chatledger.domain.session import Session
from chatledger.domain.visitor import Visitor

POSTGRES_URL = os.environ.get("CHATLEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
WINDOW = 200


def generate(ledger: ChatLedger, events: int, seed: int = 7) -> int:
    """Append about ``events`` events in time order; return how many were appended.

    A discrete-event simulation, as production would write the log: visitors
    arrive spread over 28 days, each runs its conversations turn by turn
    (coming back hours later for further sessions), and every action happens
    at its business time, so log position and time increase together and many
    visitors' conversations interleave. Timeouts are recorded when detected
    (by a sweep a few minutes after the deadline). Actions are saved in windows
    of about ``WINDOW`` events, many aggregates per transaction; within a
    window the events of one aggregate are adjacent.
    """
    rng = random.Random(seed)
    policy = AppliedPolicy.of(SessionPolicy())
    window: dict[int, object] = {}
    queue: list[tuple[datetime, int, Iterator[datetime]]] = []
    written = 0
    pending = 0
    seq = 0

    def touch(*aggregates: object) -> None:
        nonlocal pending
        for aggregate in aggregates:
            window.setdefault(id(aggregate), aggregate)
        pending += len(aggregates)

    def visitor_script(n: int, at: datetime) -> Iterator[datetime]:
        visitor = Visitor.register(f"visitor-{n}", at=at)
        touch(visitor)  # saved before its sessions, as ChatLedger.receive does
        previous: Session | None = None
        for k in range(rng.choice((1, 1, 2, 3))):
            session = Session.start(
                session_id=uuid7(at),
                visitor_id=visitor.visitor_id,
                at=at,
                policy=policy,
                channel=rng.choice(("web", "web", "whatsapp", "app")),
                user_id=visitor.user_id,
                previous=previous,
            )
            visitor.open_session(session.id, at=at)
            session.receive("hello, I have a question", at=at)
            touch(visitor, session)
            for turn in range(rng.randrange(1, 6)):
                at += timedelta(seconds=rng.randrange(1, 90))
                yield at
                session.send(f"bot answer {turn}", at=at)
                touch(session)
                at += timedelta(seconds=rng.randrange(2, 300))
                yield at
                session.receive(f"user message {turn}", at=at)
                touch(session)
            if rng.random() < 0.4:
                session.set_slot("name", f"Name {n}", at=at, scope="user")
                touch(session)
            if rng.random() < 0.3:
                session.start_task("refund", at=at)
                touch(session)
                if rng.random() < 0.6:
                    at += timedelta(seconds=30)
                    yield at
                    session.complete_task("refund", at=at)
                    touch(session)
            if rng.random() < 0.2:
                at += timedelta(seconds=5)
                yield at
                session.end(at=at)
            else:
                # Detected by a sweep a few minutes after the deadline.
                at = session.expiry()[0] + timedelta(seconds=rng.randrange(1, 300))
                yield at
                session.time_out(detected_at=at)
            touch(session)
            if k == 0 and rng.random() < 0.3:
                visitor.link_identity(f"user-{n % 5000}", at=at)
                touch(visitor)
            previous = session
            at += timedelta(hours=rng.randrange(1, 72))
            yield at

    # About 20 events per visitor: arrivals spread evenly (with jitter) over 28 days.
    gap = timedelta(days=28) / max(events / 20, 1)
    arrival, n = T0, 0
    while written + pending < events:
        # Start every visitor who arrived before the next scheduled action.
        while not queue or arrival <= queue[0][0]:
            n += 1
            script = visitor_script(n, arrival)
            seq += 1
            heapq.heappush(queue, (next(script, arrival), seq, script))
            arrival += gap * rng.uniform(0.2, 1.8)
        _, _, script = heapq.heappop(queue)
        step = next(script, None)
        if step is not None:
            seq += 1
            heapq.heappush(queue, (step, seq, script))
        if pending >= WINDOW:
            aggregates = list(window.values())
            written += sum(len(a.pending_events) for a in aggregates)  # type: ignore[attr-defined]
            ledger.save(*aggregates)  # type: ignore[arg-type]
            window.clear()
            pending = 0
    if window:
        aggregates = list(window.values())
        written += sum(len(a.pending_events) for a in aggregates)  # type: ignore[attr-defined]
        ledger.save(*aggregates)  # type: ignore[arg-type]
    return written


def timed(label: str, count: int, seconds: float, raw: float | None = None) -> str:
    rate = count / seconds
    ratio = f"  ({rate / raw:.2f}x raw)" if raw else ""
    line = f"  {label:<26} {count:>10,} events {seconds:8.1f} s {rate:>11,.0f} events/s{ratio}"
    print(line, flush=True)
    return line


def bench(url: str, events: int, batch_size: int, names: list[str] | None) -> None:
    ledger = ChatLedger.open(url)
    try:
        head = ledger.projector.head()
        if head < events:
            started = time.perf_counter()
            written = generate(ledger, events - head)
            timed("generate (append)", written, time.perf_counter() - started)
        head = ledger.projector.head()
        recorder, mapper = ledger.recorder, ledger.mapper

        started = time.perf_counter()
        position, count = 0, 0
        while True:
            batch = recorder.select_notifications(position, batch_size, inclusive_of_start=False)
            if not batch:
                break
            count += len(batch)
            position = batch[-1].id
        raw = count / (time.perf_counter() - started)
        timed("raw read", count, count / raw)

        started = time.perf_counter()
        position, count = 0, 0
        while True:
            batch = recorder.select_notifications(position, batch_size, inclusive_of_start=False)
            if not batch:
                break
            for notification in batch:
                mapper.to_domain_event(notification)
            count += len(batch)
            position = batch[-1].id
        timed("raw read + decode", count, time.perf_counter() - started, raw)

        names = names or list(ledger.projector.projections)
        for name in names:
            started = time.perf_counter()
            applied = ledger.projector.rebuild(name, batch_size=batch_size)
            timed(f"rebuild {name}", applied, time.perf_counter() - started, raw)
        if len(names) > 1:
            # All of them in one pass: each batch read and decoded once, applied to each.
            started = time.perf_counter()
            applied = ledger.projector.rebuild_many(names, batch_size=batch_size)
            assert applied == count * len(names), (applied, count)
            timed(f"rebuild all {len(names)} together", count, time.perf_counter() - started, raw)
        if hasattr(ledger.projector, "rebuild_shadow"):
            # The same, into shadow tables while the live ones serve, then swapped.
            started = time.perf_counter()
            applied = ledger.projector.rebuild_shadow(names, batch_size=batch_size)
            timed(f"rebuild --shadow {len(names)}", count, time.perf_counter() - started, raw)
        print(f"  log head {head:,}", flush=True)
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--projection", action="append", help="Rebuild only these (repeatable).")
    parser.add_argument("--sqlite-path", help="Reuse this SQLite file (default: a temp file).")
    parser.add_argument("--schema", default=None, help="PostgreSQL schema (default: a new one, dropped).")
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.events:,} events, batch {args.batch_size}")
    if args.only in (None, "sqlite"):
        path = args.sqlite_path or os.path.join(tempfile.mkdtemp(), "bench.db")
        print(f"SQLite {path}", flush=True)
        bench(f"sqlite:///{path}", args.events, args.batch_size, args.projection)
    if args.only in (None, "postgres"):
        schema = args.schema or f"bench_{uuid4().hex[:8]}"
        print(f"PostgreSQL schema {schema}", flush=True)
        try:
            bench(f"{POSTGRES_URL}?schema={schema}", args.events, args.batch_size, args.projection)
        finally:
            if args.schema is None:
                import psycopg

                with psycopg.connect(
                    "host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True
                ) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
