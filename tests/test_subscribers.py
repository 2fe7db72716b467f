"""Subscribers outside the process: ``events_after``, ``chatledger events follow``
and the webhook worker, against real databases, a real console script and a
real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from chatledger import (
    ChatLedger,
    DeadLetter,
    InvalidFieldError,
    InvalidValueError,
    LogEvent,
    ManualClock,
)

from .helpers import log_head

SECRET = "hunter2-my-card-is-4111"


def story(ledger: ChatLedger, visitor: str = "v-1", n: int = 3) -> Any:
    turn = ledger.receive(visitor, f"{SECRET} hello", metadata={"device": f"{SECRET}-meta"},
                          context={"page_url": f"https://shop/?q={SECRET}"})
    for i in range(n):
        ledger.reply(turn.session_id, f"answer {i} {SECRET}")
        ledger.receive(visitor, f"question {i} {SECRET}")
    ledger.set_slot(turn.session_id, "name", f"{SECRET}-name", scope="user")
    return turn.session_id


def chatledger_script() -> str:
    script = shutil.which("chatledger", path=os.path.dirname(sys.executable))
    assert script is not None, "the chatledger console script is not installed next to python"
    return script


def follow_cli(url: str, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [chatledger_script(), "events", "follow", "--once", "--database", url, *args],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


# ---------------------------------------------------------------- pull API and CLI


@pytest.mark.slow  # runs the console script
def test_follower_resumes_exactly_after_its_last_position(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock) as ledger:
        story(ledger, "v-1")
        story(ledger, "v-2")
        everything = ledger.events_after(0, limit=10_000)
        head = log_head(ledger)
        assert [e.position for e in everything] == sorted({e.position for e in everything})
        assert everything[-1].position == head and len(everything) == head  # nothing lost, no gaps
        # Paging with a small limit visits the same events, each once, in order.
        paged: list[LogEvent] = []
        position = 0
        while batch := ledger.events_after(position, limit=3):
            assert len(batch) <= 3
            paged.extend(batch)
            position = batch[-1].position
        assert paged == everything
        # Every resume point gives exactly the events after it.
        for p in (0, 1, 5, head - 1, head):
            assert ledger.events_after(p, limit=10_000) == [e for e in everything if e.position > p]
        ids = [e.event_id for e in everything]
        assert len(set(ids)) == len(ids)
        assert all(e.event_id == f"{e.stream}:{e.version}" for e in everything)

    # A new process (the console script) resumes after a position, and again after its last line.
    cut = everything[4].position
    lines = follow_cli(database_url, "--after", str(cut))
    assert [line["position"] for line in lines] == [e.position for e in everything if e.position > cut]
    assert [line["event_id"] for line in lines] == [e.event_id for e in everything if e.position > cut]
    last = lines[-1]["position"]
    assert follow_cli(database_url, "--after", str(last)) == []
    with ChatLedger.open(database_url, clock=clock) as ledger:
        story(ledger, "v-3", n=1)
        new = ledger.events_after(last, limit=10_000)
    again = follow_cli(database_url, "--after", str(last), "--limit", "2")
    assert [line["position"] for line in again] == [e.position for e in new]
    assert [LogEvent.model_validate(line) for line in again] == new


@pytest.mark.slow  # runs the console script
def test_follow_streams_new_events_as_they_are_appended(database_url: str) -> None:
    """Without --once the follower keeps polling: events appended while it runs
    arrive as new lines, flushed one event a line, in order, none twice."""
    with ChatLedger.open(database_url) as ledger:
        story(ledger, "v-1", n=1)
        first = ledger.events_after(0, limit=10_000)
        proc = subprocess.Popen(
            [chatledger_script(), "events", "follow", "--after", "0", "--interval", "0.1", "--limit", "2",
             "--database", database_url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            lines = [json.loads(proc.stdout.readline()) for _ in first]
            assert [line["event_id"] for line in lines] == [e.event_id for e in first]
            story(ledger, "v-2", n=1)
            more = ledger.events_after(first[-1].position, limit=10_000)
            lines += [json.loads(proc.stdout.readline()) for _ in more]
            assert [line["position"] for line in lines] == [e.position for e in first + more]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow  # runs the console script
def test_personal_fields_are_sealed_unless_content_is_asked_for(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock) as ledger:
        story(ledger)
        sealed = ledger.events_after(0)
        opened = ledger.events_after(0, content=True)
    assert [e.event_id for e in sealed] == [e.event_id for e in opened]
    assert all(not e.content for e in sealed) and all(e.content for e in opened)
    assert SECRET not in "".join(e.model_dump_json() for e in sealed)
    texts = {}
    for e in sealed:
        texts.setdefault(e.type, e.data)  # the first of each type
    assert texts["Session.MessageReceived"]["text"] == "[sealed]"
    assert texts["Session.MessageReceived"]["metadata"] == {"$sealed": True}
    assert texts["Session.SlotSet"]["value"] == {"$sealed": True} and texts["Session.SlotSet"]["key"] == "name"
    assert SECRET not in json.dumps(texts["Session.Started"]["context"])
    received = [e for e in opened if e.type == "Session.MessageReceived"]
    assert received[0].data["text"] == f"{SECRET} hello"
    assert received[0].data["metadata"] == {"device": f"{SECRET}-meta"}
    # The CLI: sealed by default, content with --content.
    assert SECRET not in json.dumps(follow_cli(database_url))
    assert f"{SECRET} hello" in json.dumps(follow_cli(database_url, "--content"))


@pytest.mark.slow  # runs the console script
def test_erased_content_is_never_delivered_and_the_erasure_is(database_url: str, clock: ManualClock) -> None:
    with ChatLedger.open(database_url, clock=clock) as writer, ChatLedger.open(database_url) as follower:
        story(writer, "v-gone")
        story(writer, "v-kept")
        # The follower (another ledger: another process's key ring) has read and cached the keys.
        assert f"{SECRET} hello" in json.dumps([e.data for e in follower.events_after(0, content=True)])
        seen = log_head(writer)
        receipt = writer.erase(visitor_id="v-gone")
        after = follower.events_after(0, limit=10_000, content=True)
        gone = {str(s) for s in receipt.session_ids}
        for event in after:
            if event.stream in gone:
                assert SECRET not in json.dumps(event.data), event
        erased_texts = [e.data["text"] for e in after if e.stream in gone and e.type.startswith("Session.Message")]
        assert erased_texts and set(erased_texts) == {"[erased]"}
        kept = [e.data["text"] for e in after if e.stream not in gone and e.type == "Session.MessageReceived"]
        assert kept[0] == f"{SECRET} hello"  # the other visitor's content is still there
        # The erasure itself is delivered, after what it erased, naming what to shred.
        tail = follower.events_after(seen, content=True)
        erasures = [e for e in tail if e.type == "Visitor.DataErased"]
        assert len(erasures) == 1
        assert erasures[0].data["receipt"]["visitor_ids"] == ["v-gone"]
        assert set(erasures[0].data["receipt"]["session_ids"]) == gone
        assert erasures[0].position > seen
    cli = follow_cli(database_url, "--content")
    assert all(SECRET not in json.dumps(line) for line in cli if line["stream"] in gone)
    assert any(line["type"] == "Visitor.DataErased" for line in cli)


def test_bad_arguments_are_refused_with_the_field_named(sqlite_url: str) -> None:
    with ChatLedger.open(sqlite_url) as ledger:
        ledger.receive("v", "hi")
        for kwargs, name in [
            ({"position": -1}, "position"),
            ({"position": "3"}, "position"),
            ({"position": True}, "position"),
            ({"limit": 0}, "limit"),
            ({"limit": 10_001}, "limit"),
            ({"content": "yes"}, "content"),
        ]:
            with pytest.raises(InvalidValueError) as err:
                ledger.events_after(**kwargs)
            assert err.value.field == name
        for kwargs, name in [
            ({"url": "ftp://example.com/"}, "url"),
            ({"url": "not a url"}, "url"),
            ({"url": "http://x/", "max_attempts": 0}, "max_attempts"),
            ({"url": "http://x/", "backoff": float("nan")}, "backoff"),
            ({"url": "http://x/", "on_dead_letter": "drop"}, "on_dead_letter"),
            ({"url": "http://x/", "name": ""}, "name"),
            ({"url": "http://x/", "headers": {"X-Token": "a\r\nX-Evil: 1"}}, "headers['X-Token']"),
            ({"url": "http://x/", "headers": {"Chatledger-Event-Id": "forged"}}, "headers key"),
            ({"url": "http://x/", "headers": {"Bad Name": "1"}}, "headers key"),
        ]:
            with pytest.raises(InvalidFieldError) as err2:
                ledger.webhook(**{"name": "sub", **kwargs})
            assert err2.value.field == name


@pytest.mark.slow
def test_a_follower_never_skips_an_event_while_writers_append(database_url: str) -> None:
    """Several writer threads append while a follower polls with small pages:
    it sees every event exactly once, in log order (the gap problem)."""
    writers_done = threading.Event()
    errors: list[BaseException] = []
    with ChatLedger.open(database_url) as ledger, ChatLedger.open(database_url) as reader:

        def write(k: int) -> None:
            try:
                for i in range(12):
                    turn = ledger.receive(f"w{k}-v{i % 3}", f"message {i}")
                    ledger.reply(turn.session_id, f"reply {i}")
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=write, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        watcher = threading.Thread(target=lambda: ([t.join() for t in threads], writers_done.set()))
        watcher.start()
        seen: list[int] = []
        position = 0
        while True:
            done = writers_done.is_set()
            batch = reader.events_after(position, limit=5)
            seen.extend(e.position for e in batch)
            if batch:
                position = batch[-1].position
            elif done:
                break
        watcher.join()
        assert not errors, errors
        assert seen == [e.position for e in reader.events_after(0, limit=10_000)]
        assert len(seen) == len(set(seen)) and seen[-1] == log_head(ledger)


# ---------------------------------------------------------------- webhooks


@dataclass
class Receiver:
    """A local HTTP receiver: records every request, answers ``status(n)`` to the n-th."""

    status: Callable[[int, dict[str, Any]], int]
    requests: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[dict[str, Any]]:
        return [body for _, body, code in self.requests if 200 <= code < 300]


@pytest.fixture
def receiver() -> Iterator[Callable[[Callable[[int, dict[str, Any]], int]], Receiver]]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: Callable[[int, dict[str, Any]], int]) -> Receiver:
        state = Receiver(status)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with state.lock:
                    code = state.status(len(state.requests) + 1, body)
                    state.requests.append((self.headers["Chatledger-Event-Id"], body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def dedup(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def test_webhook_delivers_every_event_in_order_through_failures(
    database_url: str, clock: ManualClock, receiver: Callable[..., Receiver]
) -> None:
    # Every third request fails (after the receiver has seen it: so it also sees duplicates).
    hook = receiver(lambda n, body: 500 if n % 3 == 0 else 200)
    with ChatLedger.open(database_url, clock=clock) as ledger:
        story(ledger, "v-1")
        story(ledger, "v-2")
        log = [e.event_id for e in ledger.events_after(0, limit=10_000)]
        report = ledger.webhook("analytics", hook.url, backoff=0.001).deliver_once()
        assert report.delivered == len(log) and not report.stopped and report.dead_letters == ()
        assert report.position == report.head == log_head(ledger)
        headers = [h for h, _, _ in hook.requests]
        bodies = [b["event_id"] for _, b, _ in hook.requests]
        assert headers == bodies  # the id travels in the header and the body
        assert set(headers) == set(log)  # each event seen at least once
        assert len(headers) > len(log)  # and some twice (the failed requests)
        assert dedup(headers) == log  # after dedup: exactly once, in log order
        assert [b["event_id"] for b in hook.accepted()] == log
        assert all(b["content"] is False and SECRET not in json.dumps(b) for _, b, _ in hook.requests)
        assert ledger.webhook("analytics", hook.url).dead_letters() == []

        # The position is durable: a new worker (a restart) sends only the new events.
        story(ledger, "v-3", n=1)
        new = [e.event_id for e in ledger.events_after(report.position, limit=10_000)]
        before = len(hook.requests)
        again = ledger.webhook("analytics", hook.url, backoff=0.001).deliver_once()
        assert again.delivered == len(new)
        assert dedup([h for h, _, _ in hook.requests[before:]]) == new
        # Another subscription has its own position: it starts from the beginning.
        other = receiver(lambda n, body: 200)
        assert ledger.webhook("warehouse", other.url).deliver_once().delivered == len(log) + len(new)
        assert [h for h, _, _ in other.requests] == log + new


def test_webhook_backoff_is_exponential_and_bounded(sqlite_url: str, receiver: Callable[..., Receiver]) -> None:
    hook = receiver(lambda n, body: 503)
    waits: list[float] = []
    with ChatLedger.open(sqlite_url) as ledger:
        ledger.receive("v", "hi")
        worker = ledger.webhook("s", hook.url, max_attempts=6, backoff=0.5, max_backoff=3.0, sleep=waits.append)
        report = worker.deliver_once()
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert report.stopped and len(hook.requests) == 6


@pytest.mark.slow  # runs the console script
def test_dead_letter_stops_the_worker_and_nothing_is_skipped(
    database_url: str, receiver: Callable[..., Receiver]
) -> None:
    down = True
    hook = receiver(lambda n, body: 503 if down else 204)
    with ChatLedger.open(database_url) as ledger:
        story(ledger, n=1)
        log = [e.event_id for e in ledger.events_after(0, limit=10_000)]
        worker = ledger.webhook("crm", hook.url, max_attempts=3, backoff=0.001)
        report = worker.deliver_once()
        assert report.stopped and report.delivered == 0 and report.position == 0
        assert [h for h, _, _ in hook.requests] == [log[0]] * 3  # bounded attempts, nothing after it
        (letter,) = report.dead_letters
        assert isinstance(letter, DeadLetter)
        assert (letter.subscription, letter.position, letter.event_id, letter.attempts) == ("crm", 1, log[0], 3)
        assert "503" in letter.last_error and letter.outcome == "stopped"
        assert worker.dead_letters() == [letter]
        assert worker.position() == 0
        # The CLI reports it and exits 1; the dead letter counts its attempts.
        proc = subprocess.run(
            [chatledger_script(), "events", "deliver", "--name", "crm", "--url", hook.url, "--once",
             "--max-attempts", "2", "--backoff", "0.001", "--database", database_url],
            check=False, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "stopped at position 1" in proc.stderr
        assert worker.dead_letters()[0].attempts == 5
        # The receiver is back: the next run starts with that very event.
        down = False
        hook.requests.clear()
        fixed = worker.deliver_once()
        assert fixed.delivered == len(log) and not fixed.stopped
        assert [h for h, _, _ in hook.requests] == log
        assert [d.outcome for d in worker.dead_letters()] == ["delivered"]


def test_dead_letter_can_be_skipped_on_request(database_url: str, receiver: Callable[..., Receiver]) -> None:
    with ChatLedger.open(database_url) as ledger:
        story(ledger, n=1)
        log = ledger.events_after(0, limit=10_000)
        poison = log[2].event_id
        hook = receiver(lambda n, body: 500 if body["event_id"] == poison else 200)
        worker = ledger.webhook("bi", hook.url, max_attempts=2, backoff=0.001, on_dead_letter="skip")
        report = worker.deliver_once()
        assert not report.stopped and report.position == log[-1].position
        assert report.delivered == len(log) - 1
        assert [b["event_id"] for b in hook.accepted()] == [e.event_id for e in log if e.event_id != poison]
        assert [(d.event_id, d.outcome, d.attempts) for d in worker.dead_letters()] == [(poison, "skipped", 2)]


def test_webhook_with_content_never_sends_content_erased_meanwhile(
    database_url: str, receiver: Callable[..., Receiver]
) -> None:
    """The receiver erases the visitor while the first event with content is in
    flight and refuses it: the retry, and every later event, sends it as erased;
    then the erasure is delivered."""
    with ChatLedger.open(database_url) as ledger, ChatLedger.open(database_url) as admin:
        story(ledger, "v-gone")

        def status(n: int, body: dict[str, Any]) -> int:
            if SECRET in json.dumps(body):  # the first event with content (Session.Started)
                admin.erase(visitor_id="v-gone")
                return 500
            return 200

        hook = receiver(status)
        report = ledger.webhook("mirror", hook.url, content=True, backoff=0.001).deliver_once()
        assert not report.stopped
        assert report.delivered == report.head  # the erasure came after the run's head: next run
        ledger.webhook("mirror", hook.url, content=True).deliver_once()
        accepted = hook.accepted()
        assert all(b["content"] is True for b in accepted)
        assert SECRET not in json.dumps(accepted)
        messages = [b for b in accepted if b["type"] == "Session.MessageReceived"]
        assert messages and {b["data"]["text"] for b in messages} == {"[erased]"}
        assert accepted[-2]["type"] == "Visitor.DataErased"
        assert [b["event_id"] for b in accepted] == [e.event_id for e in ledger.events_after(0, limit=10_000)]


def test_webhook_with_content_sends_nothing_erased_after_the_erasure_commits(
    database_url: str, receiver: Callable[..., Receiver]
) -> None:
    """The receiver accepts the first event with content and the visitor is erased
    right then: the rest of the batch, read before the erasure, must not go out
    with the plaintext it was read with."""
    with ChatLedger.open(database_url) as ledger, ChatLedger.open(database_url) as admin:
        story(ledger, "v-gone")
        erased: list[bool] = []

        def status(n: int, body: dict[str, Any]) -> int:
            if not erased and SECRET in json.dumps(body):
                admin.erase(visitor_id="v-gone")
                erased.append(True)
            return 200

        hook = receiver(status)
        ledger.webhook("mirror", hook.url, content=True).deliver_once()
        accepted = hook.accepted()
        first = next(i for i, b in enumerate(accepted) if SECRET in json.dumps(b))  # sent before the erasure
        assert erased and SECRET not in json.dumps(accepted[first + 1 :])
        messages = [b for b in accepted[first + 1 :] if b["type"] == "Session.MessageReceived"]
        assert messages and {b["data"]["text"] for b in messages} == {"[erased]"}
