"""docs/api.md's FastAPI example over AsyncChatLedger, served by real uvicorn on 127.0.0.1 (an
ephemeral port) and driven over HTTP with httpx, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def fastapi_example() -> str:
    section = API_DOC.read_text().split("## asyncio: `chatledger.aio`", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1
    return str(blocks[0])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` on uvicorn in a thread of its own, on 127.0.0.1 and a port the OS picks."""
    with serving(app) as (base, _):
        yield base


@contextmanager
def serving(app: Any) -> Iterator[tuple[str, uvicorn.Server]]:
    """:func:`served`, with the server (set ``should_exit`` to stop it as SIGTERM does)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


def test_the_fastapi_example_serves_a_conversation(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHATLEDGER_DATABASE_URL", database_url)
    namespace: dict[str, Any] = {}
    exec(compile(fastapi_example(), "docs/api.md", "exec"), namespace)  # noqa: S102
    with served(namespace["app"]) as base, httpx.Client(base_url=base, timeout=30) as http:
        first = http.post("/visitors/v-1/messages", json={"text": "hi", "client_message_id": "w-1"})
        assert first.status_code == 200, first.text
        turn = first.json()
        assert turn["is_new_session"] and not turn["duplicate"]
        retried = http.post("/visitors/v-1/messages", json={"text": "hi", "client_message_id": "w-1"})
        assert retried.json()["duplicate"] and retried.json()["session_id"] == turn["session_id"]
        sid = turn["session_id"]
        reply = http.post(f"/sessions/{sid}/replies", json={"text": "Hello!"})
        assert reply.status_code == 200 and reply.json()["role"] == "bot"
        state = http.get(f"/sessions/{sid}").json()
        assert [m["text"] for m in state["messages"]] == ["hi", "Hello!"]
        missing = http.get("/sessions/00000000-0000-7000-8000-000000000000")
        assert missing.status_code == 404 and missing.json()["error"] == "UnknownSessionError"
        blank = http.post("/visitors/v-1/messages", json={"text": " "})
        assert blank.status_code == 422 and blank.json()["error"] == "InvalidTextError"
    # The lifespan closed the ledger; the conversation is in the store.
    from chatledger import ChatLedger

    with ChatLedger.open(database_url) as ledger:
        assert len(ledger.session(sid).messages) == 2
