"""Tenants in the read models (issue 13): every row carries its tenant, every query
of a tenant filters by it; the sweep and retention run per tenant or store-wide;
analytics compares tenants for an operator. A Hypothesis property over random
multi-tenant histories: no query of tenant A ever returns what was written under
tenant B. On a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from chatledger import ChatLedger, ManualClock, SessionPolicy, UnknownSessionError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import POSTGRES_URL, drop_schema, require_postgres
from .helpers import separator_checks_off

TENANTS = ("default", "acme", "globex")
# Visitor ids: plain ones, and (the default tenant's only: an old store's, written with
# 0.4's id checks) ones holding the separator that spell another tenant's scoped key,
# up to the longest id a release accepted.
VISITORS = ("v-1", "v-2", "acme\x1fv-1", "globex\x1fv-2", "acme\x1fv-1".ljust(200, "\x1f"))


def test_transcripts_and_memory_are_per_tenant(ledger: ChatLedger) -> None:
    acme, globex = ledger.tenant("acme"), ledger.tenant("globex")
    for t in (acme, globex):
        sid = t.receive("v-1", f"{t.tenant_id} says hi").session_id
        t.set_slot(sid, "display_name", f"name-{t.tenant_id}", scope="user")
        t.link_identity("v-1", "u-1")
    ledger.catch_up()
    for t in (acme, globex):
        texts = [m.text for m in t.transcript(user_id="u-1").messages]
        assert texts == [f"{t.tenant_id} says hi"]
        assert [
            m.text for m in t.transcript(start=ledger.clock() - timedelta(days=1)).messages
        ] == texts
        assert t.memory(user_id="u-1").display_name == f"name-{t.tenant_id}"
    assert ledger.transcript(user_id="u-1").messages == ()
    assert not ledger.memory(user_id="u-1").known
    # a session id of another tenant reads as an unknown session's: nothing
    theirs = acme.current_session("v-1")
    assert theirs is not None
    assert globex.transcript(theirs.session_id).messages == ()
    assert globex.transcript(uuid4()).messages == ()


def test_an_erasure_in_one_tenant_blanks_only_its_read_model_rows(ledger: ChatLedger) -> None:
    acme, globex = ledger.tenant("acme"), ledger.tenant("globex")
    for t in (acme, globex):
        sid = t.receive("v-1", f"{t.tenant_id} secret").session_id
        t.set_slot(sid, "display_name", f"name-{t.tenant_id}", scope="user")
    ledger.catch_up()
    globex.erase(visitor_id="v-1")
    assert [m.text for m in acme.transcript(visitor_id="v-1").messages] == ["acme secret"]
    assert acme.memory(visitor_id="v-1").display_name == "name-acme"
    assert [m.text for m in globex.transcript(visitor_id="v-1").messages] == ["[erased]"]
    assert ledger.projection_failures() == []


def test_analytics_per_tenant_and_compared(ledger: ChatLedger, clock: ManualClock) -> None:
    acme, globex = ledger.tenant("acme"), ledger.tenant("globex")
    for n, t in ((1, ledger), (2, acme), (3, globex)):
        for i in range(n):
            t.receive(f"v-{i}", "hi")  # the same visitor ids in every tenant
    ledger.catch_up()
    assert (
        ledger.analytics().sessions,
        acme.analytics().sessions,
        globex.analytics().sessions,
    ) == (1, 2, 3)
    assert acme.analytics().visitors == 2
    compared = ledger.analytics_by_tenant()  # the operator's (a named tenant's handle refuses it)
    assert {k: v.sessions for k, v in compared.items()} == {"acme": 2, "default": 1, "globex": 3}
    assert (
        compared["globex"].model_dump()
        == globex.analytics(as_of=compared["globex"].as_of).model_dump()
    )
    assert acme.resessionize(timedelta(minutes=30)).sessions == 2


def test_the_sweep_is_per_tenant_unless_asked_for_all(
    ledger: ChatLedger, clock: ManualClock
) -> None:
    quick = ledger.tenant("quick", policy=SessionPolicy(idle_timeout=timedelta(minutes=1)))
    other = ledger.tenant("other", policy=SessionPolicy(idle_timeout=timedelta(minutes=1)))
    q = quick.receive("v-1", "hi").session_id
    o = other.receive("v-1", "hi").session_id
    d = ledger.receive("v-1", "hi").session_id
    clock.advance(timedelta(minutes=2))
    assert quick.sweep() == 1
    assert [e for e in other.session_events(o) if type(e).__name__ == "TimedOut"] == []
    assert ledger.sweep(all_tenants=True) == 1  # other's; the default one is not idle yet
    assert other.session_events(o)[-1].tenant == "other"  # type: ignore[attr-defined]
    assert ledger.session(d).status == "active" and quick.session(q).status == "timed_out"


def test_retention_per_tenant_and_store_wide(
    ledger: ChatLedger, clock: ManualClock, tmp_path: Path
) -> None:
    acme, globex = ledger.tenant("acme"), ledger.tenant("globex")
    ids = {}
    for t in (ledger, acme, globex):
        ids[t.tenant_id] = t.receive("v-1", f"{t.tenant_id} hi").session_id
        t.end_session(ids[t.tenant_id])
    ledger.sweep(all_tenants=True)
    clock.advance(timedelta(days=10))
    result = acme.archive_closed_sessions(timedelta(days=1), tmp_path / "acme")
    assert result.archived == 1 and result.path is not None
    [archived] = acme.read_archive(result.path)
    assert archived.session_id == ids["acme"] and not archived.erased
    assert globex.session(ids["globex"]).archived_at is None
    rest = ledger.archive_closed_sessions(timedelta(days=1), tmp_path / "all", all_tenants=True)
    assert rest.archived == 2 and rest.path is not None
    assert globex.session(ids["globex"]).archived_at is not None
    # A store-wide archive holds both; each tenant reads its own sessions of it only.
    assert [a.session_id for a in globex.read_archive(rest.path)] == [ids["globex"]]
    assert [a.session_id for a in ledger.read_archive(rest.path)] == [ids["default"]]
    assert acme.read_archive(rest.path) == []
    assert len(ledger.read_archive(rest.path, all_tenants=True)) == 2  # the operator's only


def test_an_old_stores_read_models_get_the_tenant_column_as_the_default(tmp_path: Path) -> None:
    """A store whose read-model tables have no tenant column (0.4.0's) gets it, as the default
    tenant's, without a rebuild (the fixture stores of tests/fixtures/stores prove the rest)."""
    import shutil

    from sqlalchemy import create_engine, inspect

    store = Path(__file__).parent / "fixtures" / "stores" / "0.4.0" / "chatledger.sqlite"
    db = tmp_path / "old.sqlite"
    shutil.copyfile(store, db)
    before = {
        c["name"]
        for c in inspect(create_engine(f"sqlite:///{db}")).get_columns("conversation_messages")
    }
    assert "tenant" not in before
    with ChatLedger.open(f"sqlite:///{db}") as ledger:
        ledger.catch_up()
        position = ledger.projector.position("conversation_log")
        texts = [m.text for m in ledger.transcript(user_id="user-ana").messages]
        assert texts and ledger.tenant("acme").transcript(user_id="user-ana").messages == ()
        assert ledger.projector.position("conversation_log") == position  # no rebuild
    after = {
        c["name"]
        for c in inspect(create_engine(f"sqlite:///{db}")).get_columns("conversation_messages")
    }
    assert "tenant" in after


# ------------------------------------------------------------------ the property


@contextmanager
def fresh_ledger(backend: str, clock: ManualClock) -> Iterator[ChatLedger]:
    if backend == "sqlite":
        with (
            tempfile.TemporaryDirectory() as folder,
            ChatLedger.open(f"sqlite:///{folder}/chat.db", clock=clock) as ledger,
        ):
            yield ledger
        return
    schema = f"t_{uuid4().hex[:16]}"
    try:
        with ChatLedger.open(f"{POSTGRES_URL}?schema={schema}", clock=clock) as ledger:
            yield ledger
    finally:
        drop_schema(schema)


step = st.one_of(
    *(
        st.tuples(st.just(op), st.sampled_from(TENANTS), st.sampled_from(VISITORS))
        for op in ("receive", "link", "slot", "erase", "wait")
    )
)


def visitors_of(tenant: str) -> tuple[str, ...]:
    return VISITORS if tenant == "default" else VISITORS[:2]


def as_of(tenant: str, visitor: str) -> tuple[str, str]:
    """``(visitor, user)`` of a step in ``tenant``: a named tenant's ids hold no separator
    (a look-alike id is its plain part); the default tenant's look-alike visitor links
    to a look-alike user ("acme\\x1fu-1")."""
    if tenant != "default" or "\x1f" not in visitor:
        return visitor.strip("\x1f").rsplit("\x1f", 1)[-1], "u-1"
    return visitor, visitor.split("\x1f")[0] + "\x1fu-1"


def users_of(tenant: str) -> tuple[str, ...]:
    return ("u-1", "acme\x1fu-1", "globex\x1fu-1") if tenant == "default" else ("u-1",)


def run_history(
    ledger: ChatLedger, clock: ManualClock, steps: list[tuple[str, str, str]]
) -> dict[str, set[UUID]]:
    written: dict[str, set[UUID]] = {t: set() for t in TENANTS}
    for n, (op, tenant, step_visitor) in enumerate(steps):
        t = ledger.tenant(tenant)
        visitor, user = as_of(tenant, step_visitor)
        if op == "receive":
            written[tenant].add(t.receive(visitor, f"{tenant}|{n}").session_id)
        elif op == "link":
            state = t.visitor(visitor)
            if state is None or state.user_id in (None, user):
                t.link_identity(visitor, user)
        elif op == "slot":
            current = t.current_session(visitor)
            if current is not None:
                t.set_slot(current.session_id, "display_name", f"{tenant}|{n}", scope="user")
        elif op == "erase" and t.visitor(visitor) is not None:
            t.erase(visitor_id=visitor)
        elif op == "wait":
            clock.advance(timedelta(hours=1))
            t.sweep()
    ledger.catch_up()
    return written


def mine(tenant: str, text: object) -> bool:
    return text == "[erased]" or (isinstance(text, str) and text.startswith(f"{tenant}|"))


def check_isolation(ledger: ChatLedger, written: dict[str, set[UUID]]) -> None:
    every = set().union(*written.values())
    for tenant in TENANTS:
        t = ledger.tenant(tenant)
        reads: list[Any] = [t.transcript(start=ledger.clock() - timedelta(days=365))]
        for visitor in visitors_of(tenant):
            reads.append(t.transcript(visitor_id=visitor))
            state = t.visitor(visitor)
            assert state is None or set(state.session_ids) <= written[tenant]
            memory = t.memory(visitor_id=visitor)
            assert memory.display_name is None or mine(tenant, memory.display_name)
        for user in users_of(tenant):
            reads.append(t.transcript(user_id=user))
            memory = t.memory(user_id=user)
            assert memory.display_name is None or mine(tenant, memory.display_name)
            assert memory.last_session_id is None or memory.last_session_id in written[tenant]
        for transcript in reads:
            assert all(mine(tenant, m.text) for m in transcript.messages)
            assert {UUID(str(m.session_id)) for m in transcript.messages} <= written[tenant]
        assert t.analytics().sessions == len(written[tenant])
        for sid in every - written[tenant]:
            with pytest.raises(UnknownSessionError):
                t.session(sid)
            assert t.transcript(sid).messages == ()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])]
)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(step, min_size=1, max_size=14))
def test_no_query_of_a_tenant_returns_what_another_tenant_wrote(
    backend: str, steps: list[tuple[str, str, str]]
) -> None:
    if backend == "postgres":
        require_postgres()
    clock = ManualClock()
    with fresh_ledger(backend, clock) as ledger, separator_checks_off():
        check_isolation(ledger, run_history(ledger, clock, steps))
        assert ledger.projection_failures() == []


def _worker_once(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "chatledger", "worker", "--once", "-d", url],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )


@pytest.mark.slow
def test_a_worker_that_never_set_a_tenants_policy_sweeps_by_its_sessions_stamped_deadline(
    tmp_path: Path,
) -> None:
    """Tenant policies live in the process that set them; ``chatledger worker`` (another
    process, the store's default 30-minute idle timeout) sweeps each session by the
    deadline its own policy stamped: a tenant's 2-hour session idle for an hour stays
    active, the default tenant's 30-minute one is timed out; then a second ledger on the
    file, without the policy, neither sweeps nor times out the tenant's session early
    (nor by ``time_out_if_idle``), and does once its own deadline has passed."""
    from datetime import UTC, datetime

    url = f"sqlite:///{tmp_path}/chat.db"
    start = datetime.now(UTC) - timedelta(hours=1)
    clock = ManualClock(start)
    long = SessionPolicy(idle_timeout=timedelta(hours=2))
    with ChatLedger.open(url, clock=clock) as ledger:
        slow = ledger.tenant("slow", policy=long).receive("v-1", "hi").session_id
        default = ledger.receive("v-1", "hi").session_id
    done = _worker_once(url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "1"  # the default tenant's session only
    clock = ManualClock(datetime.now(UTC))
    with ChatLedger.open(url, clock=clock) as other:  # no tenant policy in this process
        assert other.session(default).status == "timed_out"
        handle = other.tenant("slow")
        assert handle.policy == other.policy != long
        assert handle.session(slow).status == "active"
        assert other.sweep(all_tenants=True) == 0 and handle.sweep() == 0
        assert handle.time_out_if_idle(slow) is False
        clock.advance(timedelta(hours=1, minutes=1))  # past the tenant's own 2 hours
        assert other.sweep(all_tenants=True) == 1
        assert handle.session(slow).status == "timed_out"
