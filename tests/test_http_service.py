"""The HTTP service (entrypoints/http) on real uvicorn, 127.0.0.1 and an ephemeral port, driven
over HTTP with httpx, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from chatledger import ChatLedger, ManualClock, SessionPolicy
from chatledger.application.api_keys import SCOPES
from chatledger.entrypoints.http.app import create_app

from .test_aio_docs import served, serving

PROBLEM = "application/problem+json"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def tokens(database_url: str) -> dict[str, str]:
    """A key of each scope (and a revoked one) in the store."""
    with ChatLedger.open(database_url) as ledger:
        made = {scope: ledger.api_keys.create(f"{scope} key", [scope])[1] for scope in SCOPES}
        revoked, made["revoked"] = ledger.api_keys.create("old", ["bot"])
        ledger.api_keys.revoke(revoked.key_id)
    return made


@pytest.fixture
def service(database_url: str, clock: ManualClock, tokens: dict[str, str]) -> Iterator[str]:
    policy = SessionPolicy(idle_timeout=timedelta(minutes=30), carry_over_slots=frozenset({"language"}))
    app = create_app(database_url, clock=clock, policy=policy, max_text_chars=2000)
    with served(app) as base:
        yield base


@pytest.fixture
def http(service: str, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    """A client with the bot's key."""
    headers = {"authorization": f"Bearer {tokens['bot']}"}
    with httpx.Client(base_url=service, timeout=30, headers=headers) as client:
        yield client


def test_the_seeds_story_over_http(
    http: httpx.Client, clock: ManualClock, database_url: str, tokens: dict[str, str]
) -> None:
    first = http.post("/v1/visitors/v-ana/messages", json={"text": "Opening hours?", "client_message_id": "w-1"})
    assert first.status_code == 200, first.text
    sid = first.json()["session_id"]
    assert http.post(f"/v1/sessions/{sid}/replies", json={"text": "9 to 6."}).status_code == 200
    clock.advance(minutes=2)
    second = http.post("/v1/visitors/v-ana/messages", json={"text": "Portugal?"}).json()
    assert second["session_id"] == sid and not second["is_new_session"]
    clock.advance(hours=1)
    back = http.post("/v1/visitors/v-ana/messages", json={"text": "I'm back"}).json()
    assert back["is_returning"] and back["previous_session_id"] == sid
    assert http.post(f"/v1/sessions/{back['session_id']}/replies", json={"text": "Welcome back!"}).status_code == 200
    # A retried webhook: the same turn, nothing appended.
    retry = http.post("/v1/visitors/v-ana/messages", json={"text": "Opening hours?", "client_message_id": "w-1"})
    assert retry.json()["duplicate"] and retry.json()["session_id"] == sid
    then = http.get(f"/v1/sessions/{sid}", params={"as_of": "2026-01-01T09:01:00+00:00"}).json()
    assert then["status"] == "active" and [m["text"] for m in then["messages"]] == ["Opening hours?", "9 to 6."]
    assert http.get(f"/v1/sessions/{sid}").json()["status"] == "timed_out"
    with ChatLedger.open(database_url) as ledger:  # the read models, caught up out of band
        ledger.catch_up()
    transcript = http.get("/v1/transcripts", params={"visitor_id": "v-ana"}).json()
    analyst = {"authorization": f"Bearer {tokens['analyst']}"}
    assert http.get("/v1/transcripts", params={"visitor_id": "v-ana"}, headers=analyst).json() == transcript
    assert [m["text"] for m in transcript["messages"]] == [
        "Opening hours?", "9 to 6.", "Portugal?", "I'm back", "Welcome back!",
    ]
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_errors_are_problem_json_and_append_nothing(http: httpx.Client, database_url: str) -> None:
    def problem(response: httpx.Response, status: int, type_: str) -> dict[str, object]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM
        body: dict[str, object] = response.json()
        assert body["type"] == type_ and body["status"] == status and body["title"] and body["detail"]
        return body

    unknown = http.get("/v1/sessions/00000000-0000-7000-8000-000000000000")
    problem(unknown, 404, "urn:chatledger:problem:unknown-session")
    problem(http.get("/v1/sessions/not-a-uuid"), 404, "urn:chatledger:problem:unknown-session")
    blank = problem(http.post("/v1/visitors/v-1/messages", json={"text": " "}), 422,
                    "urn:chatledger:problem:invalid-text")
    assert blank["field"] == "text" and blank["rule"] == "blank"
    naive = http.get("/v1/sessions/00000000-0000-7000-8000-000000000000", params={"as_of": "2026-01-01T09:00:00"})
    problem(naive, 422, "urn:chatledger:problem:invalid-time")
    problem(http.post("/v1/visitors/v-1/messages", json={"txt": "hi"}), 422, "urn:chatledger:problem:invalid-request")
    problem(http.post("/v1/visitors/v-1/messages", content=b"{not json"), 422, "urn:chatledger:problem:invalid-request")
    long = http.post("/v1/visitors/v-1/messages", json={"text": "x" * 2001})
    problem(long, 422, "urn:chatledger:problem:field-too-large")
    problem(http.get("/v1/nothing-here"), 404, "urn:chatledger:problem:not-found")
    # Bodies over the bound the limits allow: refused before they are read whole.
    huge = b'{"text": "' + b"x" * 2_000_000 + b'"}'
    declared = http.post("/v1/visitors/v-1/messages", content=huge, headers={"content-type": "application/json"})
    assert problem(declared, 413, "urn:chatledger:problem:body-too-large")["limit"]

    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(200):
            yield b"x" * 10_000
        yield b'"}'

    streamed = http.post("/v1/visitors/v-1/messages", content=chunks(), headers={"content-type": "application/json"})
    problem(streamed, 413, "urn:chatledger:problem:body-too-large")
    with ChatLedger.open(database_url) as ledger:
        assert ledger.events_after(0) == [] and ledger.visitor("v-1") is None


def test_the_openapi_document_names_the_typed_models(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert {"/v1/visitors/{visitor_id}/messages", "/v1/sessions/{session_id}/replies",
            "/v1/sessions/{session_id}", "/v1/transcripts", "/healthz", "/readyz"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"Turn", "Message", "SessionState", "Transcript", "IncomingMessage", "Reply"} <= set(schemas)


def test_chatledger_serve_runs_the_service_and_stops_on_sigterm(database_url: str, tmp_path: object) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(sys.executable).parent / "chatledger"
    env = {**os.environ, "CHATLEDGER_DATABASE_URL": database_url}
    created = subprocess.run(
        [str(script), "keys", "create", "--name", "cli bot", "--scope", "bot"], cwd=str(tmp_path),
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    import json

    token = json.loads(created.stdout)["token"]
    proc = subprocess.Popen(
        [str(script), "serve", "--port", "0"], cwd=str(tmp_path), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "chatledger serve exited"
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url is not None
        assert json.loads(line)["logger"].startswith("uvicorn")  # uvicorn's own lines are JSON too
        turn = httpx.post(
            f"{url}/v1/visitors/v-cli/messages", json={"text": "hi"}, timeout=30,
            headers={"authorization": f"Bearer {token}"},
        )
        assert turn.status_code == 200 and turn.json()["is_new_session"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    # Its logs are JSON lines, one for the request with its id (as answered), route and key.
    assert proc.stdout is not None
    lines = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    (logged,) = [line for line in lines if line.get("logger") == "chatledger.http"]
    assert logged["request_id"] == turn.headers["x-request-id"] and logged["status"] == 200
    assert logged["route"] == "/v1/visitors/{visitor_id}/messages" and logged["key_id"]
    with ChatLedger.open(database_url) as ledger:
        assert ledger.visitor("v-cli") is not None


def test_every_error_class_has_its_problem_type_and_status_in_the_docs() -> None:
    import re
    from pathlib import Path

    from chatledger.application import errors
    from chatledger.entrypoints.http.problems import PREFIX, problem_type, status_of

    doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    section = doc.split("## HTTP service", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, int] = {}
    for names, status in re.findall(r"^\| (.+?) \| (\d{3}) \|$", section, re.MULTILINE):
        for name in re.findall(r"`([a-z-]+)`", names):
            documented[name] = int(status)
    assert documented
    for name in errors.__all__:
        cls = getattr(errors, name)
        kebab = problem_type(cls).removeprefix(PREFIX)
        assert documented.get(kebab) == status_of(cls), (name, kebab)


def test_keys_and_scopes_are_enforced_with_nothing_appended(
    service: str, tokens: dict[str, str], database_url: str
) -> None:
    def post(token: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.post(f"{service}/v1/visitors/v-9/messages", json={"text": "hi"}, headers=headers, timeout=30)

    for token in (None, "clk_nope_nope", tokens["bot"] + "x", tokens["revoked"], "Basic abc"):
        refused = post(token)
        assert refused.status_code == 401, (token, refused.text)
        assert refused.json()["type"] == "urn:chatledger:problem:unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
    for scope in ("analyst", "auditor", "admin"):
        refused = post(tokens[scope])
        assert refused.status_code == 403 and refused.json()["type"] == "urn:chatledger:problem:forbidden"
    for scope in ("auditor", "admin"):
        read = httpx.get(f"{service}/v1/transcripts", headers={"authorization": f"Bearer {tokens[scope]}"})
        assert read.status_code == 403
    assert httpx.get(f"{service}/healthz").status_code == 200  # no key needed
    with ChatLedger.open(database_url) as ledger:
        assert ledger.events_after(0) == []
    assert post(tokens["bot"]).status_code == 200


def test_keys_are_stored_hashed_and_revoked_at_once(database_url: str) -> None:
    import psycopg  # noqa: F401 - the PostgreSQL side reads the table through the ledger's engine
    from sqlalchemy import text

    with ChatLedger.open(database_url) as ledger:
        key, token = ledger.api_keys.create("bot", ["bot", "analyst"])
        assert token.startswith(f"clk_{key.key_id}_") and key.tenant == "default"
        assert ledger.api_keys.authenticate(token) == key
        with ledger.projector.engine.connect() as conn:
            stored = conn.execute(text("SELECT * FROM chatledger_api_keys")).mappings().all()
        assert len(stored) == 1 and token.split("_", 2)[2] not in str(dict(stored[0]))
        ledger.api_keys.revoke(key.key_id)
        assert ledger.api_keys.authenticate(token) is None
        assert [k.active for k in ledger.api_keys.list()] == [False]


def test_shutdown_finishes_the_commits_in_flight(database_url: str, tokens: dict[str, str]) -> None:
    import threading
    import time

    from .test_aio import SignallingClock, write_lock_held

    clock = SignallingClock()
    app = create_app(database_url, clock=clock)
    answers: list[httpx.Response] = []
    with serving(app) as (base, server), write_lock_held(database_url) as release:
        clock.asked.clear()
        client = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{base}/v1/visitors/v-late/messages", json={"text": "hi"}, timeout=60,
            headers={"authorization": f"Bearer {tokens['bot']}"},
        )))
        client.start()
        assert clock.asked.wait(30)  # the command runs, waiting for the write lock
        server.should_exit = True  # as on SIGTERM
        time.sleep(0.5)
        assert client.is_alive() and not answers
        release()
        client.join(30)
    assert answers and answers[0].status_code == 200, answers
    with ChatLedger.open(database_url) as ledger:
        assert ledger.visitor("v-late") is not None


@pytest.mark.slow
def test_the_readmes_service_commands_run(tmp_path: object) -> None:
    """README, "HTTP service": the key, ``chatledger serve`` on the embedded default, the curls."""
    import json
    import os
    import re
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    section = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("## HTTP service\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    commands = [
        line.strip() for line in re.sub(r"\\\n\s*", "", section).splitlines() if line.startswith("    ")
    ]
    create, serve_, *curls = (c.split("  #")[0].strip() for c in commands)
    assert create.startswith("chatledger keys create") and serve_ == "chatledger serve --port 8000"
    assert len(curls) == 2 and all(c.startswith("curl ") for c in curls)
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    bin_ = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "CHATLEDGER_DATABASE_URL"}
    env["PATH"] = f"{bin_}:{env.get('PATH', '')}"
    made = subprocess.run(create, shell=True, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    env["TOKEN"] = json.loads(made.stdout)["token"]
    proc = subprocess.Popen(serve_.replace("8000", "0"), shell=True, cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline, port = time.monotonic() + 60, None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "chatledger serve exited"
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            port = found.group(1) if found else None
        assert port is not None
        answers = [
            json.loads(subprocess.run(c.replace("localhost:8000", f"127.0.0.1:{port}"), shell=True, env=env,
                                      capture_output=True, text=True, timeout=60, check=True).stdout)
            for c in curls
        ]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    turn, current = answers
    assert turn["is_new_session"] and current["session_id"] == turn["session_id"]
    assert [m["text"] for m in current["messages"]] == ["hi"]
    assert (Path(str(tmp_path)) / "chatledger.db").exists()
