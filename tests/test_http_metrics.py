"""``/metrics`` of the HTTP service (prometheus-client), on real uvicorn over SQLite and
PostgreSQL: requests, turns, events appended, conflicts (and the re-reads that are not), sweep
backlog and sweeps, projection lag, erasures; a key with scope ``metrics`` is needed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from chatledger import ChatLedger, ManualClock
from prometheus_client.parser import text_string_to_metric_families

from .http_helpers import POLICY, client, event_count, make_tokens, problem, service


def scrape(c: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = c.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


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


def test_metrics_need_a_key_with_the_metrics_scope(base: str, tokens: dict[str, str]) -> None:
    with client(base, None) as anonymous:
        problem(anonymous.get("/metrics"), 401, "unauthorized")
    for scope in ("bot", "analyst", "auditor", "admin"):
        with client(base, tokens[scope]) as c:
            problem(c.get("/metrics"), 403, "forbidden")
    with client(base, tokens["metrics"]) as c:
        assert scrape(c)[("chatledger_database_up", ())] == 1


def test_metrics_count_requests_turns_events_sweeps_lag_and_erasures(
    base: str, tokens: dict[str, str], database_url: str, clock: ManualClock
) -> None:
    bot, admin, ops = client(base, tokens["bot"]), client(base, tokens["admin"]), client(base, tokens["metrics"])
    with bot, admin, ops:
        for i in range(3):
            assert bot.post(f"/v1/visitors/v-{i}/messages", json={"text": "hi", "client_message_id": "c-1"}).status_code == 200
        assert bot.post("/v1/visitors/v-0/messages", json={"text": "hi", "client_message_id": "c-1"}).json()["duplicate"]
        assert bot.post("/v1/visitors/v-0/messages", json={"text": " "}).status_code == 422
        seen = scrape(ops)
        route = "/v1/visitors/{visitor_id}/messages"
        requests = "chatledger_http_requests_total"
        assert seen[(requests, (("method", "POST"), ("route", route), ("status", "200")))] == 4
        assert seen[(requests, (("method", "POST"), ("route", route), ("status", "422")))] == 1
        assert seen[("chatledger_turns_total", (("duplicate", "false"),))] == 3
        assert seen[("chatledger_turns_total", (("duplicate", "true"),))] == 1
        assert seen[("chatledger_turn_duration_seconds_count", ())] == 4
        assert seen[("chatledger_http_request_duration_seconds_count", (("route", route),))] == 5
        stored = event_count(database_url)
        assert seen[("chatledger_events_appended_total", ())] == stored > 0
        assert seen[("chatledger_commands_total", ())] == 3
        # Nothing raced: the duplicate's re-read on fresh data is no conflict.
        assert seen[("chatledger_conflicts_total", ())] == 0
        assert seen[("chatledger_fresh_reads_total", ())] >= 1
        lags = {dict(k[1])["read_model"]: v for k, v in seen.items() if k[0] == "chatledger_projection_lag_events"}
        assert lags and all(lag == stored for lag in lags.values())
        assert admin.post("/v1/operations/catch-up").status_code == 200
        clock.advance(hours=1)
        seen = scrape(ops)
        assert all(v == 0 for k, v in seen.items() if k[0] == "chatledger_projection_lag_events")
        assert seen[("chatledger_sweep_backlog_sessions", ())] == 3
        assert admin.post("/v1/operations/sweep").json() == {"timed_out": 3}
        assert admin.post("/v1/erasures", json={"visitor_id": "v-1"}).status_code == 200
        seen = scrape(ops)
        assert seen[("chatledger_sweep_backlog_sessions", ())] == 0
        assert seen[("chatledger_sweeps_total", ())] == 1
        assert seen[("chatledger_sweep_timed_out_sessions_total", ())] == 3
        assert seen[("chatledger_sweep_seconds_total", ())] > 0
        assert seen[("chatledger_erasures_total", ())] == 1
        assert seen[("chatledger_events_appended_total", ())] == event_count(database_url)
        assert ("chatledger_group_commit_batch_callers_count", ()) in seen


def test_a_lost_race_counts_as_a_conflict_and_a_re_read_does_not(
    base: str, tokens: dict[str, str], database_url: str, clock: ManualClock
) -> None:
    """The service's ledger decides on its cached copy; another process (a ledger of its own on
    the same store) wrote since: the save conflicts, is re-run on fresh reads and counted."""
    bot, ops = client(base, tokens["bot"]), client(base, tokens["metrics"])
    with bot, ops:
        sid = bot.post("/v1/visitors/v-1/messages", json={"text": "one"}).json()["session_id"]
        with ChatLedger.open(database_url, clock=clock, policy=POLICY) as other:
            other.reply(sid, "from another process")
        second = bot.post("/v1/visitors/v-1/messages", json={"text": "two"})
        assert second.status_code == 200 and second.json()["session_id"] == sid
        seen = scrape(ops)
        assert seen[("chatledger_conflicts_total", ())] == 1
        assert seen[("chatledger_retries_total", ())] >= 1
        assert seen[("chatledger_conflicts_exhausted_total", ())] == 0
    with ChatLedger.open(database_url) as ledger:
        assert [m.text for m in ledger.session(sid).messages] == ["one", "from another process", "two"]


@pytest.mark.slow
def test_the_worker_serves_the_same_ledger_metrics(database_url: str, tmp_path: object) -> None:
    """``chatledger worker --metrics-port 0``: its catch-ups and sweeps, the lag and backlog."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    with ChatLedger.open(database_url) as ledger:  # two sessions long idle: due at once
        for i in range(2):
            ledger.receive(f"v-{i}", "hi", at=datetime.now(UTC) - timedelta(days=1))
    script = Path(sys.executable).parent / "chatledger"
    env = {**os.environ, "CHATLEDGER_DATABASE_URL": database_url}
    proc = subprocess.Popen(
        [str(script), "worker", "--interval", "0.5", "--projections-interval", "0.5", "--metrics-port", "0"],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", proc.stdout.readline())
        assert found, "the worker did not print its metrics address"
        deadline, seen = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            text = httpx.get(found.group(1), timeout=10).text
            seen = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if not s.labels}
            if seen.get("chatledger_sweep_timed_out_sessions_total") == 2:
                break
            time.sleep(0.2)
        assert seen["chatledger_sweep_timed_out_sessions_total"] == 2
        assert seen["chatledger_sweeps_total"] >= 1 and seen["chatledger_database_up"] == 1
        assert seen["chatledger_events_appended_total"] == 2  # the two timed-out events
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_every_answer_has_a_request_id_and_a_log_line(
    base: str, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging
    import time

    from chatledger.entrypoints.http.observe import JsonLogs

    with caplog.at_level(logging.INFO, logger="chatledger.http"), client(base, tokens["bot"]) as bot:
        mine = bot.post("/v1/visitors/v-1/messages", json={"text": "hi"}, headers={"x-request-id": "req-42"})
        fresh = bot.get("/v1/visitors/v-nobody", headers={"x-request-id": "bad id!"})
        refused = httpx.get(f"{base}/v1/visitors/v-1")
        assert mine.headers["x-request-id"] == "req-42"
        assert fresh.status_code == 404 and len(fresh.headers["x-request-id"]) == 32  # replaced
        assert refused.status_code == 401 and refused.headers["x-request-id"]
        ids = {"req-42", fresh.headers["x-request-id"], refused.headers["x-request-id"]}
        deadline = time.monotonic() + 10  # each line is logged once its answer is sent
        while True:
            records = {getattr(r, "request_id", None): r for r in caplog.records if r.name == "chatledger.http"}
            if ids <= set(records) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    logged = records["req-42"]
    assert (logged.route, logged.status, logged.method) == ("/v1/visitors/{visitor_id}/messages", 200, "POST")  # type: ignore[attr-defined]
    assert logged.key_id and logged.duration_ms > 0  # type: ignore[attr-defined]
    assert records[refused.headers["x-request-id"]].status == 401  # type: ignore[attr-defined]
    line = json.loads(JsonLogs().format(logged))
    assert line["request_id"] == "req-42" and line["logger"] == "chatledger.http" and line["level"] == "info"
    assert line["message"] == "POST /v1/visitors/{visitor_id}/messages 200"


def test_each_request_is_an_opentelemetry_span_named_after_its_route(
    sqlite_url: str, clock: ManualClock
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tokens = make_tokens(sqlite_url)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with service(sqlite_url, clock, tracer_provider=provider) as url, client(url, tokens["bot"]) as bot:
        answer = bot.post(
            "/v1/visitors/v-1/messages", json={"text": "hi"},
            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-request-id": "r-1"},
        )
        assert answer.status_code == 200
        assert bot.get("/healthz").status_code == 200  # not traced
        deadline = time.monotonic() + 10
        while not exporter.get_finished_spans() and time.monotonic() < deadline:
            time.sleep(0.01)
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST /v1/visitors/{visitor_id}/messages"
    assert format(span.context.trace_id, "032x") == trace_id  # the client's trace continues
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/visitors/{visitor_id}/messages"
    assert span.attributes["chatledger.request_id"] == "r-1"


def test_tracing_can_be_turned_off(sqlite_url: str) -> None:
    from chatledger.entrypoints.http.app import create_app
    from opentelemetry.sdk.trace import TracerProvider

    def traced(app: Any) -> bool:
        return "OpenTelemetryMiddleware" in {getattr(m.cls, "__name__", "") for m in app.user_middleware}

    # Installed here, but no provider is configured in this process: spans would go nowhere.
    assert not traced(create_app(sqlite_url))
    assert traced(create_app(sqlite_url, tracing=True))
    assert traced(create_app(sqlite_url, tracer_provider=TracerProvider()))
    assert not traced(create_app(sqlite_url, tracing=False, tracer_provider=TracerProvider()))
