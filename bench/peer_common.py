"""What every contender of bench/peers.py shares: the payloads, the clock, the statistics.

A *message* is one durable commit (a user message or a bot reply); a *turn* is a user
message and a bot reply, two commits, for every contender.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PG_ENV = {  # eventsourcing's own PostgreSQL settings
    "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "test",
    "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "5432", "POSTGRES_USER": "postgres",
    "POSTGRES_PASSWORD": "",
}

# Identical payloads for every contender: a user message of ~80 characters, a bot reply of ~330.
USER_TEXT = "Hi, I ordered a blue jacket last week and it has not arrived yet. Where is it now?"
BOT_TEXT = (
    "Sorry about that! I checked order A-17 for you: the blue jacket left our warehouse "
    "yesterday afternoon and is with the courier now. The tracking page says it should reach "
    "you by Thursday before noon. If it has not arrived by Friday, reply here and I will send "
    "a replacement at no cost, or refund you in full, whichever you prefer. Anything else?"
)
TEXTS = (USER_TEXT, BOT_TEXT)


def text_of(k: int) -> tuple[str, str]:
    """The role and text of the k-th message of a conversation (0-based): user, bot, user…"""
    return ("user", USER_TEXT) if k % 2 == 0 else ("bot", BOT_TEXT)


def payload_bytes(messages: int) -> int:
    """UTF-8 bytes of the text of ``messages`` messages (the storage denominator)."""
    return sum(len(text_of(k)[1].encode()) for k in range(messages))


class Writer(Protocol):
    """One conversation of one contender: ``write(k)`` durably records its k-th message."""

    def __call__(self, k: int) -> None: ...


class Contender(Protocol):
    name: str

    def writer(self, conversation: str) -> Writer: ...
    def close(self) -> None: ...


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cpu_seconds() -> float:
    """User + system CPU of this process so far (every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Run:
    """One timed run of one contender in one scenario."""

    messages: int
    seconds: float
    cpu: float
    latencies: list[float] = field(default_factory=list)

    @property
    def turns_per_s(self) -> float:
        return self.messages / 2 / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu / self.messages * 1e6

    @property
    def p99(self) -> float:
        return pct(self.latencies, 0.99)

    @property
    def p50(self) -> float:
        return pct(self.latencies, 0.50)

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "seconds": round(self.seconds, 4),
                "turns_per_s": round(self.turns_per_s, 1), "cpu_us_per_message": round(self.cpu_us_per_message),
                "p50_ms": round(self.p50 * 1e3, 3), "p99_ms": round(self.p99 * 1e3, 3)}


def drive(writers: Sequence[Writer], turns: int, first: int = 0) -> tuple[float, float, float, list[float]]:
    """Each writer in its own thread, ``turns`` turns from message ``first``; all start together.

    Returns (start, end, cpu seconds, per-call latencies) on ``time.perf_counter``'s clock
    (CLOCK_MONOTONIC: comparable across the processes of one machine).
    """
    lat: list[list[float]] = [[] for _ in writers]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(writers) + 1)

    def work(i: int) -> None:
        write, mine, perf = writers[i], lat[i], time.perf_counter
        try:
            barrier.wait()
            for k in range(first, first + 2 * turns):
                t0 = perf()
                write(k)
                mine.append(perf() - t0)
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(writers))]
    for t in threads:
        t.start()
    cpu0 = cpu_seconds()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    end = time.perf_counter()
    cpu = cpu_seconds() - cpu0
    if errors:
        raise errors[0]
    return start, end, cpu, [x for xs in lat for x in xs]


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fsync_floor(directory: str, n: int = 200) -> float:
    """Median seconds of one 4 KiB write + fdatasync in ``directory`` (the disk's floor)."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block, times = b"x" * 4096, []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i % 64) * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.remove(path)
    return statistics.median(times)
