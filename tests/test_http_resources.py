"""Every resource of the HTTP service, on real uvicorn (127.0.0.1, an ephemeral port) driven with
httpx, on SQLite and PostgreSQL: the seed's story end to end, idempotent retries, each scope
refused where it must be with nothing appended, problem+json for bad input, a typed OpenAPI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from chatledger import ChatLedger, ManualClock
from chatledger.application.api_keys import SCOPES
from chatledger.entrypoints.http.app import create_app

from .http_helpers import client, event_count, make_tokens, problem, service

NO_SESSION = "00000000-0000-7000-8000-000000000000"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def tokens(database_url: str) -> dict[str, str]:
    return make_tokens(database_url)


@pytest.fixture
def base(database_url: str, clock: ManualClock, tokens: dict[str, str]) -> Iterator[str]:
    with service(database_url, clock) as url:
        yield url


@pytest.fixture
def as_(base: str, tokens: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    """A client per scope (and ``"none"``: no key)."""
    clients = {scope: client(base, tokens[scope]) for scope in SCOPES}
    clients["none"] = client(base, None)
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, (response.request.method, response.request.url, response.text)
    return response.json()


def test_the_seeds_story_end_to_end_over_http(
    as_: dict[str, httpx.Client], clock: ManualClock
) -> None:
    bot, admin, analyst, auditor = as_["bot"], as_["admin"], as_["analyst"], as_["auditor"]
    first = ok(bot.post("/v1/visitors/v-ana/messages", json={
        "text": "Hi! What are your opening hours?", "client_message_id": "wa-1",
        "context": {"locale": "en-GB"},
    }))
    sid = first["session_id"]
    assert first["is_new_session"] and not first["is_returning"]
    assert ok(bot.put(f"/v1/sessions/{sid}/slots/language", json={"value": "en"}))["slots"] == {"language": "en"}
    reply = {"text": "We're open 9:00-18:00.", "client_message_id": "bot-1"}
    said = ok(bot.post(f"/v1/sessions/{sid}/replies", json=reply))
    assert ok(bot.post(f"/v1/sessions/{sid}/replies", json=reply)) == said  # a retried reply: the same
    clock.advance(minutes=2)
    second = ok(bot.post("/v1/visitors/v-ana/messages", json={"text": "Do you ship to Portugal?"}))
    assert second["session_id"] == sid and not second["is_new_session"]
    # A retried webhook of the first question: the same turn, nothing appended.
    retry = ok(bot.post("/v1/visitors/v-ana/messages", json={
        "text": "Hi! What are your opening hours?", "client_message_id": "wa-1",
    }))
    assert retry["duplicate"] and retry["message"] == first["message"]
    clock.advance(hours=1)  # the visitor walks away for an hour (the ledger's clock)
    back = ok(bot.post("/v1/visitors/v-ana/messages", json={"text": "I'm back, I'd like to order"}))
    new = back["session_id"]
    assert back["is_returning"] and back["previous_session_id"] == sid and new != sid
    assert back["carried_slots"] == {"language": "en"} and back["away_for"]
    ok(bot.post(f"/v1/sessions/{new}/replies", json={"text": "Welcome back! How can I help?"}))
    # Login, a task, a fact about the person.
    linked = ok(bot.post("/v1/visitors/v-ana/identity", json={"user_id": "user-ana"}))
    assert linked["user_id"] == "user-ana"
    assert ok(bot.post("/v1/visitors/v-ana/identity", json={"user_id": "user-ana"})) == linked
    assert ok(bot.post(f"/v1/sessions/{new}/tasks", json={"task": "order"}))["open_tasks"] == ["order"]
    ok(bot.put(f"/v1/sessions/{new}/slots/name", json={"value": "Ana", "scope": "user"}))
    done = ok(bot.post(f"/v1/sessions/{new}/tasks/order/completion"))
    assert done["completed_tasks"] == ["order"] and done["open_tasks"] == []
    assert ok(bot.delete(f"/v1/sessions/{new}/slots/language"))["slots"] == {"name": "Ana"}
    assert ok(bot.get("/v1/visitors/v-ana/current-session"))["session_id"] == new
    visitor = ok(bot.get("/v1/visitors/v-ana"))
    assert visitor["user_id"] == "user-ana" and visitor["session_ids"] == [sid, new]
    # The first session as it stood, now, and replayed by the auditor from the log only.
    then = ok(bot.get(f"/v1/sessions/{sid}", params={"as_of": "2026-01-01T09:01:00+00:00"}))
    assert then["status"] == "active" and len(then["messages"]) == 2
    assert ok(bot.get(f"/v1/sessions/{sid}"))["status"] == "timed_out"
    replayed = ok(auditor.get(f"/v1/sessions/{sid}/replay", params={"until": "2026-01-01T09:01:00+00:00"}))
    assert replayed == then
    ended = ok(bot.post(f"/v1/sessions/{new}/end", json={"reason": "order placed"}))
    assert ended["status"] == "ended" and ended["close_reason"] == "order placed"
    # The read models, brought up to date by the operator; cross-session memory for the bot.
    assert ok(admin.post("/v1/operations/catch-up"))["applied"] > 0
    status = ok(admin.get("/v1/operations/projections"))
    assert status and all(s["lag"] == 0 and s["failed"] == 0 for s in status)
    memory = ok(bot.get("/v1/memory", params={"user_id": "user-ana"}))
    assert memory["known"] and memory["display_name"] == "Ana" and memory["session_count"] == 2
    assert memory["last_session_id"] == new
    transcript = ok(analyst.get("/v1/transcripts", params={"user_id": "user-ana"}))
    assert [m["text"] for m in transcript["messages"]] == [
        "Hi! What are your opening hours?", "We're open 9:00-18:00.", "Do you ship to Portugal?",
        "I'm back, I'd like to order", "Welcome back! How can I help?",
    ]
    assert ok(bot.get("/v1/transcripts", params={"session_id": new}))["messages"][0]["text"] == (
        "I'm back, I'd like to order"
    )
    stats = ok(analyst.get("/v1/analytics"))
    assert stats["sessions"] == 2 and stats["returning_sessions"] == 1 and stats["linked_visitors"] == 1
    wider = ok(analyst.get("/v1/resessionize", params={"timeout": "PT2H"}))
    assert wider["sessions"] == 1 and wider["messages"] == 5
    # The auditor: the history of a session, the chains, the bundle.
    steps = ok(auditor.get(f"/v1/sessions/{sid}/history"))
    assert steps[0]["event"] == "Session.Started" and steps[-1]["event"] == "Session.TimedOut"
    assert [s["version"] for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1]["state"]["status"] == "timed_out"
    verified = ok(auditor.get("/v1/audit/verify"))
    assert verified["ok"] and verified["break_count"] == 0 and verified["checked"] > 0
    assert ok(auditor.get("/v1/audit/verify", params={"session_id": sid}))["ok"]
    bundle = auditor.get("/v1/audit/export", params={"user_id": "user-ana"})
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in bundle.text.splitlines()]
    assert len(lines) > 3 and lines[-1]  # header, the events, the verification line
    # The sweep: nothing left to time out (the first session timed out lazily, then was recorded).
    assert ok(admin.get("/v1/operations/sweep-backlog")) == {"due": 0}
    assert ok(admin.post("/v1/operations/sweep")) == {"timed_out": 0}
    # Erasure by the admin: the content reads erased, the structure stays.
    receipt = ok(admin.post("/v1/erasures", json={"user_id": "user-ana"}))
    assert receipt["subject"] == "user" and set(receipt["session_ids"]) == {sid, new}
    erased = ok(bot.get(f"/v1/sessions/{sid}"))
    assert erased["messages"] and all(m["text"] == "[erased]" for m in erased["messages"])


def test_idle_sessions_are_in_the_sweep_backlog_until_swept(
    as_: dict[str, httpx.Client], clock: ManualClock
) -> None:
    bot, admin = as_["bot"], as_["admin"]
    for i in range(3):
        ok(bot.post(f"/v1/visitors/v-{i}/messages", json={"text": "hello"}))
    ok(admin.post("/v1/operations/catch-up"))
    assert ok(admin.get("/v1/operations/sweep-backlog")) == {"due": 0}
    clock.advance(hours=1)
    assert ok(admin.get("/v1/operations/sweep-backlog")) == {"due": 3}
    assert ok(admin.post("/v1/operations/sweep")) == {"timed_out": 3}
    assert ok(admin.get("/v1/operations/sweep-backlog")) == {"due": 0}
    missing = bot.get("/v1/visitors/v-0/current-session")
    problem(missing, 404, "not-found")


# Every endpoint that takes a key, with the scopes it takes. {sid}: a real session of the store.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, frozenset[str]]] = [
    ("POST", "/v1/visitors/v-1/messages", {"text": "hi"}, frozenset({"bot"})),
    ("POST", "/v1/sessions/{sid}/replies", {"text": "hello"}, frozenset({"bot"})),
    ("PUT", "/v1/sessions/{sid}/slots/k", {"value": 1}, frozenset({"bot"})),
    ("DELETE", "/v1/sessions/{sid}/slots/k", None, frozenset({"bot"})),
    ("POST", "/v1/sessions/{sid}/tasks", {"task": "t"}, frozenset({"bot"})),
    ("POST", "/v1/sessions/{sid}/tasks/t/completion", None, frozenset({"bot"})),
    ("POST", "/v1/visitors/v-1/identity", {"user_id": "u-1"}, frozenset({"bot"})),
    ("GET", "/v1/sessions/{sid}", None, frozenset({"bot"})),
    ("GET", "/v1/visitors/v-1", None, frozenset({"bot"})),
    ("GET", "/v1/visitors/v-1/current-session", None, frozenset({"bot"})),
    ("POST", "/v1/sessions/{sid}/end", {}, frozenset({"bot"})),
    ("GET", "/v1/transcripts?visitor_id=v-1", None, frozenset({"bot", "analyst"})),
    ("GET", "/v1/memory?visitor_id=v-1", None, frozenset({"bot", "analyst"})),
    ("GET", "/v1/analytics", None, frozenset({"analyst"})),
    ("GET", "/v1/resessionize?timeout=PT10M", None, frozenset({"analyst"})),
    ("GET", "/v1/sessions/{sid}/replay?until=2030-01-01T00:00:00Z", None, frozenset({"auditor"})),
    ("GET", "/v1/sessions/{sid}/history", None, frozenset({"auditor"})),
    ("GET", "/v1/audit/verify", None, frozenset({"auditor"})),
    ("GET", "/v1/audit/export?session_id={sid}", None, frozenset({"auditor"})),
    ("POST", "/v1/erasures", {"visitor_id": "v-1"}, frozenset({"admin"})),
    ("GET", "/v1/operations/projections", None, frozenset({"admin"})),
    ("POST", "/v1/operations/catch-up", None, frozenset({"admin"})),
    ("GET", "/v1/operations/sweep-backlog", None, frozenset({"admin"})),
    ("POST", "/v1/operations/sweep", None, frozenset({"admin"})),
    ("GET", "/metrics", None, frozenset({"metrics"})),
]
OPEN_ENDPOINTS = {("GET", "/healthz"), ("GET", "/readyz")}


def test_the_scope_table_names_every_endpoint() -> None:
    app = create_app("sqlite:///unused.db")
    served = {  # every route of the app, as its OpenAPI document lists them
        (method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations
    }
    import re

    def template(path: str) -> str:
        path = path.split("?")[0].replace("{sid}", "{session_id}")
        path = re.sub(r"/visitors/v-1", "/visitors/{visitor_id}", path)
        path = re.sub(r"/slots/k$", "/slots/{key}", path)
        return re.sub(r"/tasks/t/", "/tasks/{task}/", path)

    assert {(m, template(p)) for m, p, _, _ in ENDPOINTS} | OPEN_ENDPOINTS == served


def test_every_scope_is_refused_where_it_must_be_with_nothing_appended(
    database_url: str, base: str, tokens: dict[str, str], as_: dict[str, httpx.Client]
) -> None:
    sid = ok(as_["bot"].post("/v1/visitors/v-1/messages", json={"text": "first"}))["session_id"]
    before = event_count(database_url)
    revoked = client(base, tokens["revoked"])
    for method, path, body, allowed in ENDPOINTS:
        url = path.replace("{sid}", sid)
        for who in ("none", "revoked", *SCOPES):
            if who in allowed:
                continue
            answer = (as_.get(who) or revoked).request(method, url, json=body)
            if who in ("none", "revoked"):
                problem(answer, 401, "unauthorized")
                assert answer.headers["www-authenticate"].startswith("Bearer")
            else:
                problem(answer, 403, "forbidden")
    revoked.close()
    assert event_count(database_url) == before
    # The allowed scope gets through each (the last writes run after every refusal).
    for method, path, body, allowed in ENDPOINTS:
        answer = as_[min(allowed)].request(method, path.replace("{sid}", sid), json=body)
        assert answer.status_code == 200, (method, path, answer.text)
    assert event_count(database_url) > before


def test_bad_input_is_problem_json_and_appends_nothing(
    database_url: str, as_: dict[str, httpx.Client]
) -> None:
    bot, admin, analyst, auditor = as_["bot"], as_["admin"], as_["analyst"], as_["auditor"]
    sid = ok(bot.post("/v1/visitors/v-1/messages", json={"text": "first"}))["session_id"]
    ok(bot.post("/v1/visitors/v-1/identity", json={"user_id": "u-1"}))
    before = event_count(database_url)
    problem(bot.put(f"/v1/sessions/{NO_SESSION}/slots/k", json={"value": 1}), 404, "unknown-session")
    problem(bot.put(f"/v1/sessions/{sid}/slots/k", json={"value": 1, "extra": 2}), 422, "invalid-request")
    problem(bot.put(f"/v1/sessions/{sid}/slots/k", json={}), 422, "invalid-request")
    problem(bot.put(f"/v1/sessions/{sid}/slots/{' '}", json={"value": 1}), 422, "invalid-text")
    problem(bot.put(f"/v1/sessions/{sid}/slots/k", json={"value": 1, "scope": "tenant"}), 422, "invalid-request")
    problem(bot.post(f"/v1/sessions/{sid}/tasks/never/completion"), 409, "task-state")
    problem(bot.post(f"/v1/sessions/{sid}/replies", json={"text": "x", "role": "user"}), 422, "invalid-request")
    problem(bot.post("/v1/visitors/v-1/identity", json={"user_id": "u-2"}), 409, "identity-conflict")
    problem(bot.get("/v1/visitors/v-nobody"), 404, "not-found")
    problem(bot.get("/v1/memory", params={"user_id": "u-1", "visitor_id": "v-1"}), 422, "invalid-command")
    problem(analyst.get("/v1/analytics", params={"start": "2026-01-01T00:00:00"}), 422, "invalid-time")
    problem(analyst.get("/v1/resessionize", params={"timeout": "PT0S"}), 422, "invalid-time")
    problem(analyst.get("/v1/resessionize"), 422, "invalid-request")
    problem(auditor.get(f"/v1/sessions/{sid}/history", params={"version": 0}), 422, "invalid-value")
    problem(auditor.get(f"/v1/sessions/{NO_SESSION}/replay", params={"until": "2030-01-01T00:00:00Z"}),
            404, "unknown-session")
    problem(auditor.get("/v1/audit/export", params={"user_id": "u-nobody"}), 404, "unknown-subject")
    problem(auditor.get("/v1/audit/export"), 422, "invalid-command")
    problem(admin.post("/v1/erasures", json={}), 422, "invalid-command")
    problem(admin.post("/v1/erasures", json={"user_id": "u-1", "visitor_id": "v-1"}), 422, "invalid-command")
    problem(admin.post("/v1/erasures", json={"user_id": "u-nobody"}), 404, "unknown-subject")
    ended = ok(bot.post(f"/v1/sessions/{sid}/end"))
    assert ended["status"] == "ended"
    problem(bot.post(f"/v1/sessions/{sid}/replies", json={"text": "late"}), 409, "session-closed")
    assert event_count(database_url) == before + 1  # the end only


def test_the_openapi_document_is_typed(as_: dict[str, httpx.Client]) -> None:
    spec = ok(as_["none"].get("/openapi.json"))
    schemas = spec["components"]["schemas"]
    assert {
        "Turn", "Message", "SessionState", "VisitorState", "Transcript", "Memory", "Analytics",
        "Resessionized", "ErasureReceipt", "Verification", "HistoryEntry", "ProjectionState",
        "SweepBacklog", "IncomingMessage", "Reply", "SlotValue", "NewTask", "IdentityLink",
        "ErasureRequest",
    } <= set(schemas)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path in ("/metrics", "/v1/audit/export"):
                continue  # text answers
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert schema.get("$ref") or schema.get("items", {}).get("$ref"), (method, path, schema)


def test_no_database_call_runs_on_the_services_event_loop(
    database_url: str, clock: ManualClock, tokens: dict[str, str]
) -> None:
    """100 concurrent HTTP receives (keys checked, 25 visitors, lost races re-run), a scrape of
    /metrics and reads: every database call ran in the ledger's worker threads."""
    import asyncio
    import threading

    from chatledger.entrypoints.http.app import create_app

    from .aio_helpers import database_threads
    from .http_helpers import POLICY
    from .test_aio_docs import served

    app = create_app(database_url, clock=clock, policy=POLICY, key_cache_seconds=0)
    loop_threads: set[int] = set()

    async def recorded(scope: Any, receive: Any, send: Any) -> None:
        loop_threads.add(threading.get_ident())
        if scope["type"] == "http" and scope["path"] == "/probe":  # a database call on the loop
            app.state.ledgers["default"].sync.visitor("v-0")
            scope = {**scope, "path": "/healthz"}
        await app(scope, receive, send)

    async def drive(base: str) -> None:
        headers = {"authorization": f"Bearer {tokens['bot']}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            answers = await asyncio.gather(*(
                http.post(f"/v1/visitors/v-{i % 25}/messages", json={"text": f"m {i}", "client_message_id": f"m-{i}"})
                for i in range(100)
            ))
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
            sid = answers[0].json()["session_id"]
            assert (await http.get(f"/v1/sessions/{sid}")).status_code == 200
            assert (await http.get("/v1/transcripts", params={"session_id": sid})).status_code == 200
            scraped = await http.get("/metrics", headers={"authorization": f"Bearer {tokens['metrics']}"})
            assert scraped.status_code == 200
            (loop_thread,) = loop_threads
            on_loop.append(seen[loop_thread])
            # The probe sees a call made on the loop's thread (so the count could fail):
            assert (await http.get("/probe")).status_code == 200
            assert seen[loop_thread] > on_loop[0]

    on_loop: list[int] = []
    with database_threads() as seen, served(recorded) as base:  # the probe first: in every thread
        asyncio.run(drive(base))
    (loop_thread,) = loop_threads
    assert on_loop == [0], f"{on_loop} database calls ran on the service's event loop"
    assert sum(n for t, n in seen.items() if t != loop_thread) > 100
    with ChatLedger.open(database_url) as ledger:
        stored = [e for e in ledger.events_after(0, limit=10_000) if e.type == "Session.MessageReceived"]
    assert len(stored) == 100


def test_another_tenants_ids_answer_404_with_nothing_appended(
    database_url: str, as_: dict[str, httpx.Client], base: str
) -> None:
    """A key bound to tenant "acme" is served by acme's handle: its own conversations work; the
    default tenant's session, visitor or user answer 404 exactly as an id that does not exist
    (ids cannot be probed), nothing is appended, and the other way round."""
    bot = as_["bot"]
    sid = ok(bot.post("/v1/visitors/v-1/messages", json={"text": "mine"}))["session_id"]
    ok(bot.post("/v1/visitors/v-1/identity", json={"user_id": "u-1"}))
    with ChatLedger.open(database_url) as ledger:
        acme = {scope: client(base, ledger.api_keys.create(f"acme {scope}", [scope], tenant="acme")[1])
                for scope in ("bot", "analyst", "auditor", "admin")}
    before = event_count(database_url)
    probes = [
        ("bot", "GET", f"/v1/sessions/{sid}", None, "unknown-session"),
        ("bot", "POST", f"/v1/sessions/{sid}/replies", {"text": "not yours"}, "unknown-session"),
        ("bot", "PUT", f"/v1/sessions/{sid}/slots/k", {"value": 1}, "unknown-session"),
        ("bot", "POST", f"/v1/sessions/{sid}/end", None, "unknown-session"),
        ("bot", "GET", "/v1/visitors/v-1", None, "not-found"),
        ("bot", "GET", "/v1/visitors/v-1/current-session", None, "not-found"),
        ("auditor", "GET", f"/v1/sessions/{sid}/replay?until=2030-01-01T00:00:00Z", None, "unknown-session"),
        ("auditor", "GET", f"/v1/audit/export?session_id={sid}", None, "unknown-session"),
        ("admin", "POST", "/v1/erasures", {"user_id": "u-1"}, "unknown-subject"),
    ]
    for scope, method, path, body, name in probes:
        missing = path.replace(sid, NO_SESSION).replace("v-1", "v-none")
        mine = problem(acme[scope].request(method, path, json=body), 404, name)
        absent = problem(acme[scope].request(method, missing, json=body), 404, name)
        assert {k: v for k, v in mine.items() if k != "detail"} == {
            k: v for k, v in absent.items() if k != "detail"
        }
    assert event_count(database_url) == before
    assert ok(bot.get(f"/v1/sessions/{sid}"))["status"] == "active"  # untouched
    # acme's own conversation, under the same visitor id: its own session, unseen by default.
    theirs = ok(acme["bot"].post("/v1/visitors/v-1/messages", json={"text": "acme's"}))
    assert theirs["session_id"] != sid and theirs["is_new_session"] and not theirs["is_returning"]
    problem(bot.get(f"/v1/sessions/{theirs['session_id']}"), 404, "unknown-session")
    assert ok(acme["bot"].get("/v1/visitors/v-1/current-session"))["session_id"] == theirs["session_id"]
    ok(as_["admin"].post("/v1/operations/catch-up"))
    assert [m["text"] for m in ok(acme["analyst"].get("/v1/transcripts", params={"visitor_id": "v-1"}))["messages"]] == ["acme's"]
    assert [m["text"] for m in ok(bot.get("/v1/transcripts", params={"user_id": "u-1"}))["messages"]] == ["mine"]
    assert ok(acme["analyst"].get("/v1/transcripts", params={"user_id": "u-1"}))["messages"] == []
    for c in acme.values():
        c.close()
