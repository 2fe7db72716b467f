"""The aggregate cache hands out deep copies: the fast ``Aggregate.__deepcopy__``
must isolate a copy exactly as ``copy.deepcopy`` did (no I/O, no timing)."""

from __future__ import annotations

from copy import deepcopy
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from chatledger import SessionPolicy
from chatledger.domain.pydantic_aggregates import _IMMUTABLE_VALUES, Aggregate
from chatledger.domain.policy import AppliedPolicy
from chatledger.domain.session import Session
from chatledger.domain.visitor import Visitor

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def _busy_session() -> Session:
    policy = SessionPolicy(carry_over_slots={"name"})
    first = Session.start(
        session_id=uuid4(), visitor_id="v", at=T0, policy=AppliedPolicy.of(policy)
    )
    first.set_slot("name", "Ada", at=T0, scope="user")
    first.end(at=T0 + timedelta(seconds=1))
    s = Session.start(
        session_id=uuid4(),
        visitor_id="v",
        at=T0 + timedelta(hours=1),
        policy=AppliedPolicy.of(policy),
        previous=first,
        carry_over_slots=policy.carry_over_slots,
    )
    at = T0 + timedelta(hours=1, seconds=1)
    s.receive("hi", at=at, client_message_id="c1", metadata={"k": [1, 2]})
    s.send("hello", at=at)
    s.set_slot("order", {"id": "A-17"}, at=at)
    s.start_task("refund", at=at)
    s.start_task("survey", at=at)
    s.complete_task("survey", at=at)
    s.link_identity("u-1", at=at)
    return s


def _check_contract(aggregate: Aggregate) -> None:
    """Every container copied one level holds only immutable values, and every
    other list/dict/set attribute is not declared (so it is deep-copied)."""
    for key, value in vars(aggregate).items():
        if key in type(aggregate).shallow_containers:
            items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
            for k, v in items:
                assert isinstance(k, _IMMUTABLE_VALUES), (key, k)
                assert isinstance(v, _IMMUTABLE_VALUES), (key, v)
        elif isinstance(value, (list, dict, set)):
            raise AssertionError(f"{type(aggregate).__name__}.{key} is a container not declared")


def test_session_copy_is_equal_and_isolated() -> None:
    s = _busy_session()
    s.collect_events()
    _check_contract(s)
    c = deepcopy(s)
    assert type(c) is Session and c is not s
    assert vars(c) == vars(s)
    for key in Session.shallow_containers:
        assert getattr(c, key) is not getattr(s, key)
    before = deepcopy(vars(s))
    c.receive("more", at=T0 + timedelta(hours=1, seconds=2), client_message_id="c2")
    c.set_slot("x", 1, at=T0 + timedelta(hours=1, seconds=2))
    c.complete_task("refund", at=T0 + timedelta(hours=1, seconds=2))
    assert vars(s) == before
    assert len(s.messages) == 2 and len(c.messages) == 3
    assert s.collect_events() == []
    assert c.version == s.version + 3


def test_visitor_copy_is_equal_and_isolated() -> None:
    v = Visitor.register("v", at=T0)
    v.open_session(uuid4(), at=T0)
    v.collect_events()
    _check_contract(v)
    c = deepcopy(v)
    assert vars(c) == vars(v)
    c.open_session(uuid4(), at=T0)
    c.link_identity("u", at=T0)
    assert len(v.session_ids) == 1 and v.user_id is None
