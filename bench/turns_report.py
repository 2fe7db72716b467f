"""bench/turns.py's report and its optional profiles (pyinstrument if installed, else cProfile)."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
from collections.abc import Iterator
from typing import Any, Self
from uuid import UUID

from chatledger import ChatLedger

from turns_backends import BOT_TEXT, USER_TEXT


@contextlib.contextmanager
def snapshots_disabled(ledger: ChatLedger) -> Iterator[None]:
    repo = ledger.repository
    saved = repo.snapshot_store
    repo.snapshot_store = None
    try:
        yield
    finally:
        repo.snapshot_store = saved

class Profiled:
    """pyinstrument (sampling, if installed) or cProfile around a block."""

    def __init__(self, title: str) -> None:
        self.title = title
        try:
            from pyinstrument import Profiler
        except ImportError:
            self.sampler = None
            self.profile = cProfile.Profile()
        else:
            self.sampler = Profiler(interval=0.0005)

    def __enter__(self) -> Self:
        if self.sampler is not None:
            self.sampler.start()
        else:
            self.profile.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            print(f"\n-- profile (pyinstrument): {self.title}")
            print(self.sampler.output_text(unicode=False, color=False))
        else:
            self.profile.disable()
            print_profile(self.profile, self.title, 25, "cumulative")
            print_profile(self.profile, self.title, 25, "tottime")


def profile_turns(ledger: ChatLedger, turns: int, tag: str, name: str) -> None:
    """The 1-conversation loop again, in this thread, profiled (not timed)."""
    visitor = f"bench-{tag}-profile"
    with Profiled(f"{name}: {turns} turns, 1 conversation"):
        for _ in range(turns):
            turn = ledger.receive(visitor, USER_TEXT)
            ledger.reply(turn.session_id, BOT_TEXT)


def profile_reads(ledger: ChatLedger, sid: UUID, name: str, messages: int) -> None:
    cache = ledger.repository.cache
    assert cache is not None
    for title, ctx in (
        ("cold cache, snapshots", contextlib.nullcontext()),
        ("cold cache, no snapshots", snapshots_disabled(ledger)),
    ):
        with ctx, Profiled(f"{name}: 5 x session() of {messages} messages, {title}"):
            for _ in range(5):
                with contextlib.suppress(KeyError):
                    cache.get(sid, evict=True)
                ledger.session(sid)


def print_report(results: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> None:
    p = print
    p()
    p(f"chatledger session-engine benchmark -- {os.cpu_count()} CPUs, Python {platform.python_version()}, "
      f"load average at end {os.getloadavg()[0]:.2f}, total {seconds:.0f} s")
    p("turn = ledger.receive() + ledger.reply(), each its own committed transaction.")
    p(f"'1 conversation': one thread, {args.single_turns} turns in a row (a fresh visitor per trial).")
    p(f"writes: {args.trials} trials alternating ledger and raw runs; turns/s = median over trials, "
      "latency percentiles over all calls of all trials.")
    p(f"'{args.conversations} concurrent': {args.conversations} visitors, each an open session; "
      f"{args.workers} worker threads share one ChatLedger, each thread owns "
      f"{args.conversations}/{args.workers} conversations and drives them round-robin "
      f"({args.rounds} rounds, so {args.conversations * args.rounds} turns; "
      f"at most {args.workers} calls in flight).")
    p("raw = the same message rows, copied from the ledger's table, inserted by plain "
      "sqlite3/psycopg into an identical table, one commit per message, same threads and order.")
    for res in results:
        p()
        p(f"== {res['backend']}  ({res['durability']}; cache_size={res['cache_size']}, "
          f"snapshot_interval={res['snapshot_interval']})")
        p(f"{'writes':<26}{'turns/s':>10}{'raw turns/s':>13}{'ledger/raw':>12}{'target':>9}"
          f"{'receive p50/p99 ms':>21}{'reply p50/p99 ms':>19}{'raw commit p50/p99':>21}")
        for key, name in (("one", "1 conversation"), ("many", f"{args.conversations} concurrent")):
            led, raw = res["writes"][key]["ledger"], res["writes"][key]["raw"]
            ratio = led["turns_per_s"] / raw["turns_per_s"]
            res["writes"][key]["ratio"] = round(ratio, 3)
            p(f"{name:<26}{led['turns_per_s']:>10.1f}{raw['turns_per_s']:>13.1f}{ratio:>12.2f}"
              f"{'>= 0.50 ' + ('met' if ratio >= 0.5 else 'MISSED'):>9}"
              f"{led['receive_p50_ms']:>12.2f}/{led['receive_p99_ms']:<8.2f}"
              f"{led['reply_p50_ms']:>10.2f}/{led['reply_p99_ms']:<8.2f}"
              f"{raw['commit_p50_ms']:>12.2f}/{raw['commit_p99_ms']:<8.2f}")
        r = res["read"]
        p(f"{'read ' + str(r['messages']) + '-message session':<40}{'ms':>9}{'x raw SELECT':>14}")
        for key, name in (
            ("raw_select_ms", f"raw SELECT of the {r['rows']} rows"),
            ("raw_select_json_ms", "raw SELECT + json.loads"),
            ("cold_snapshot_ms", "session(), cold cache, snapshots"),
            ("cold_no_snapshot_ms", "session(), cold cache, no snapshots"),
            ("warm_cache_ms", "session(), warm cache"),
            ("as_of_ms", "session(as_of=last), full replay"),
        ):
            ratio = r[key] / r["raw_select_ms"]
            r[key.replace("_ms", "_x")] = round(ratio, 2)
            verdict = ""
            if key in ("cold_snapshot_ms", "cold_no_snapshot_ms", "warm_cache_ms"):
                verdict = "  target <= 3x " + ("met" if ratio <= 3 else "MISSED")
            p(f"{name:<40}{r[key]:>9.2f}{ratio:>14.2f}{verdict}")


def print_profile(profile: cProfile.Profile, title: str, limit: int, key: str = "tottime") -> None:
    buf = io.StringIO()
    stats = pstats.Stats(profile, stream=buf).strip_dirs().sort_stats(key)
    stats.print_stats(limit)
    print(f"\n-- profile: {title} (top {limit} by {key})")
    print("\n".join(line for line in buf.getvalue().splitlines() if line.strip()))

