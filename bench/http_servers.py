"""The servers bench/http_load.py measures, each in a process of its own on a socket it is given.

    python bench/http_servers.py service FD DATABASE_URL WORKERS [KEY_CACHE_S]  # chatledger's service
    python bench/http_servers.py bare FD                           # a bare FastAPI endpoint
    python bench/http_servers.py embedded DATABASE_URL WORKERS CLIENTS SECONDS  # no HTTP

``service`` and ``bare`` run uvicorn (one process, its default loop and HTTP parser, uvicorn's
access log off) on the listening socket ``FD``; the service logs as ``chatledger serve`` does
(a JSON line a request, to stderr: bench/http_load.py sends it to /dev/null). The bare app has the same route, takes a body of the same
shape (a pydantic model) and answers a small pydantic model: what any FastAPI endpoint costs.
``embedded`` runs the same workload as the load's clients through ``AsyncChatLedger`` in this
process (each client its own visitor, one ``receive`` after another) and prints a JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import Any
from uuid import UUID, uuid4

TEXT = "Hi, I ordered a blue jacket last week and it has not arrived yet. Where is it now?"


def bare_app() -> Any:
    from fastapi import FastAPI
    from pydantic import BaseModel, ConfigDict

    class Incoming(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str
        client_message_id: str | None = None
        session_id: str | None = None
        channel: str = "web"
        context: dict[str, Any] | None = None
        metadata: dict[str, Any] | None = None

    class Answer(BaseModel):
        session_id: UUID
        text: str
        duplicate: bool = False

    app = FastAPI()

    @app.post("/v1/visitors/{visitor_id}/messages")
    async def receive(visitor_id: str, body: Incoming) -> Answer:
        return Answer(session_id=uuid4(), text=body.text)

    return app


def serve(app: Any, fd: int) -> None:
    import signal

    import uvicorn

    def stopped(signum: int, frame: object) -> None:  # uvicorn re-raises SIGTERM after its shutdown
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stopped)

    sock = socket.socket(fileno=fd)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


async def embedded(url: str, workers: int, clients: int, seconds: float) -> dict[str, Any]:
    from chatledger.aio import AsyncChatLedger

    latencies: list[float] = []
    async with AsyncChatLedger.open(url, workers=workers) as ledger:
        await ledger.receive("warm-up", "hello")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        deadline = wall0 + seconds

        async def one(i: int) -> int:
            n = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await ledger.receive(f"e-{i}", TEXT, client_message_id=f"e-{i}-{n}")
                latencies.append(time.perf_counter() - started)
                n += 1
            return n

        sent = sum(await asyncio.gather(*(one(i) for i in range(clients))))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"sent": sent, "cpu_s": cpu, "wall_s": wall, "latencies": latencies}


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "bare":
        serve(bare_app(), int(argv[1]))
    elif kind == "service":
        from chatledger.entrypoints.http.app import create_app

        import logging.config

        from chatledger.entrypoints.http.observe import log_config

        logging.config.dictConfig(log_config("json"))  # as chatledger serve logs: a JSON line a request
        cache = float(argv[4]) if len(argv) > 4 else 5.0  # key_cache_seconds (0: a lookup per request)
        serve(create_app(argv[2], workers=int(argv[3]), key_cache_seconds=cache), int(argv[1]))
    elif kind == "embedded":
        result = asyncio.run(embedded(argv[1], int(argv[2]), int(argv[3]), float(argv[4])))
        sys.stdout.write(json.dumps(result) + "\n")
    else:  # pragma: no cover
        raise SystemExit(f"unknown server {kind!r}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main(sys.argv[1:])
