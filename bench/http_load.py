"""HTTP load benchmark (issue 14): the service's turns/s, latency and CPU per request, beside a
bare FastAPI endpoint and the same workload through the embedded API, in the same run.

Run ``python bench/http_load.py`` (``--help`` for the knobs; the ``[server]`` and ``[bench]``
extras). Loopback only (127.0.0.1); bounded by ``--seconds`` per phase and ``--clients``.

Each phase runs ``--clients`` concurrent clients (httpx, one keep-alive connection each, all in
this process on one event loop), each its own conversation (its own visitor), posting one user
message after another for ``--seconds``:

- **bare**: a bare FastAPI endpoint (bench/http_servers.py ``bare``: the same route and body
  shape, a pydantic answer, no ledger) on uvicorn, one process, as the service runs;
- **service**: ``chatledger``'s HTTP service on a fresh store (``--backend``), one uvicorn
  process with ``--workers`` ledger worker threads, a bot key on every request;
- **embedded**: the same clients' workload through ``AsyncChatLedger`` in a process of its own
  (no HTTP), on a fresh store of the same backend.

For each phase: requests, turns/s, p50/p99 latency, and the server's CPU (user + system of the
server process, from /proc, over the measured window) per request. ``service - embedded -
bare`` is the service's own overhead per request (keys, validation, serialisation, metrics,
the offload to worker threads): the target is at most 1 ms. After the service phase the store
is read back: every acknowledged message must be stored once (``lost`` and ``duplicated``
must be 0). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

HERE = Path(__file__).resolve().parent
SERVERS = str(HERE / "http_servers.py")
PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"
TEXT = "Hi, I ordered a blue jacket last week and it has not arrived yet. Where is it now?"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Server:
    """A server of bench/http_servers.py in its own process, on a socket bound here."""

    def __init__(self, *args: str, profile: str | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        fd = self.sock.fileno()
        profiler = ["-m", "pyinstrument", "-r", "text", "-o", profile] if profile else []
        self.proc = subprocess.Popen(
            [sys.executable, *profiler, SERVERS, args[0], str(fd), *args[1:]], pass_fds=[fd],
            stderr=subprocess.DEVNULL,  # the service's log lines (written, then dropped)
        )

    def wait_ready(self, path: str, headers: dict[str, str]) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the server exited"
            try:
                httpx.post(self.url + path, json={"text": "warm-up"}, headers=headers, timeout=5)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not answer")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.sock.close()


async def load(url: str, headers: dict[str, str], clients: int, seconds: float, tag: str) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    acked: list[str] = []
    failed: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        # one request per client first: the connections open before the window
        await asyncio.gather(*(
            http.post(f"/v1/visitors/{tag}-{i}/messages", json={"text": "hello", "client_message_id": f"{tag}-{i}-w"})
            for i in range(clients)
        ))
        deadline = time.perf_counter() + seconds

        async def one(i: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                cid = f"{tag}-{i}-{n}"
                started = time.perf_counter()
                answer = await http.post(
                    f"/v1/visitors/{tag}-{i}/messages", json={"text": TEXT, "client_message_id": cid}
                )
                latencies.append(time.perf_counter() - started)
                (acked if answer.status_code == 200 else failed).append(cid)
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.perf_counter() - started
    return {"latencies": latencies, "acked": acked, "failed": failed, "wall_s": wall}


def measured(server: Server, headers: dict[str, str], clients: int, seconds: float, tag: str) -> dict[str, Any]:
    cpu0 = cpu_seconds(server.proc.pid)
    result = asyncio.run(load(server.url, headers, clients, seconds, tag))
    result["cpu_s"] = cpu_seconds(server.proc.pid) - cpu0
    return result


def stored_messages(url: str) -> list[str]:
    """The client message ids of every user message in the store, in log order."""
    from chatledger import ChatLedger

    ids: list[str] = []
    with ChatLedger.open(url) as ledger:
        position = 0
        while batch := ledger.events_after(position, limit=10_000, content=True):
            position = batch[-1].position
            ids += [
                e.data["client_message_id"] for e in batch
                if e.type.endswith("MessageReceived") and e.data.get("role", "user") == "user"
                and e.data.get("client_message_id")
            ]
    return ids


class Store:
    """A fresh store of the backend: a SQLite file in a temporary folder, or a PG schema."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.folder = tempfile.mkdtemp(prefix="http-load-")
        self.schema = f"bench_http_{uuid4().hex[:10]}"
        self.url = (
            f"sqlite:///{self.folder}/chat.db" if backend == "sqlite" else f"{PG_BASE}?schema={self.schema}"
        )

    def drop(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def row(name: str, requests: int, wall: float, cpu: float, latencies: list[float]) -> dict[str, Any]:
    return {
        "phase": name, "requests": requests, "per_s": requests / wall if wall else 0.0,
        "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_ms": cpu * 1000 / requests if requests else float("nan"),
    }


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    from chatledger import ChatLedger

    rows: dict[str, dict[str, Any]] = {}
    bare = Server("bare")
    try:
        bare.wait_ready("/v1/visitors/w/messages", {})
        r = measured(bare, {}, args.clients, args.seconds, "b")
        rows["bare"] = row("bare FastAPI", len(r["latencies"]), r["wall_s"], r["cpu_s"], r["latencies"])
    finally:
        bare.stop()

    store = Store(args.backend)
    try:
        with ChatLedger.open(store.url) as ledger:
            token = ledger.api_keys.create("bench", ["bot"])[1]
        headers = {"authorization": f"Bearer {token}"}
        service = Server("service", store.url, str(args.workers), str(args.key_cache), profile=args.profile)
        try:
            service.wait_ready("/v1/visitors/w/messages", headers)
            r = measured(service, headers, args.clients, args.seconds, "s")
        finally:
            service.stop()
        rows["service"] = row("chatledger service", len(r["latencies"]), r["wall_s"], r["cpu_s"], r["latencies"])
        stored = stored_messages(store.url)
        measured_ids = [i for i in stored if i.startswith("s-") and not i.endswith("-w")]
        counted = set(measured_ids)
        acked = set(r["acked"])
        rows["service"].update(
            acked=len(acked), refused=len(r["failed"]), stored=len(measured_ids),
            lost=len(acked - counted), duplicated=len(measured_ids) - len(counted),
        )
    finally:
        store.drop()

    store = Store(args.backend)
    try:
        out = subprocess.run(
            [sys.executable, SERVERS, "embedded", store.url, str(args.workers), str(args.clients), str(args.seconds)],
            capture_output=True, text=True, check=True,
        )
        e = json.loads(out.stdout.strip().splitlines()[-1])
        rows["embedded"] = row("embedded AsyncChatLedger", e["sent"], e["wall_s"], e["cpu_s"], e["latencies"])
    finally:
        store.drop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase (default 8)")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, default=4, help="ledger worker threads of the service (default 4)")
    parser.add_argument("--repeat", type=int, default=1, help="runs; figures are min/median over them")
    parser.add_argument("--key-cache", type=float, default=5.0,
                        help="the service's key_cache_seconds (0: a key lookup per request; default 5)")
    parser.add_argument("--json", action="store_true", help="print each run's rows as JSON too")
    parser.add_argument("--profile", metavar="FILE", help="profile the service's event loop thread "
                        "with pyinstrument (its text report to FILE; the figures then include it)")
    args = parser.parse_args()
    print(
        f"HTTP load: {args.clients} clients x {args.seconds:g} s per phase, {args.backend}, "
        f"1 uvicorn process, {args.workers} ledger worker threads, loopback; {os.cpu_count()} CPUs"
    )
    runs = [one_run(args) for _ in range(args.repeat)]
    for i, rows in enumerate(runs, 1):
        if args.json:
            print(json.dumps(rows))
        print(f"run {i}:")
        for r in rows.values():
            extra = ""
            if "lost" in r:
                extra = (f"  acked {r['acked']} stored {r['stored']} lost {r['lost']} "
                         f"duplicated {r['duplicated']} refused {r['refused']}")
            print(f"  {r['phase']:<26} {r['requests']:>6} req {r['per_s']:>8.1f}/s  p50 {r['p50_ms']:6.1f} ms"
                  f"  p99 {r['p99_ms']:6.1f} ms  CPU {r['cpu_ms']:.2f} ms/req{extra}")
        overhead = rows["service"]["cpu_ms"] - rows["embedded"]["cpu_ms"] - rows["bare"]["cpu_ms"]
        print(f"  service's own overhead (service - embedded - bare): {overhead:.2f} ms CPU/request")
    if len(runs) > 1:
        def stat(phase: str, key: str) -> str:
            values = [r[phase][key] for r in runs]
            return f"min {min(values):.2f} median {statistics.median(values):.2f}"

        for phase in ("bare", "service", "embedded"):
            print(f"{phase:<9} CPU ms/req {stat(phase, 'cpu_ms')}; per s {stat(phase, 'per_s')}")
        overheads = [r["service"]["cpu_ms"] - r["embedded"]["cpu_ms"] - r["bare"]["cpu_ms"] for r in runs]
        print(f"overhead  ms CPU/req min {min(overheads):.2f} median {statistics.median(overheads):.2f}")


if __name__ == "__main__":
    main()
