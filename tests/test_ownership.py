"""Issue 9, item 7: every combination of ids must belong together.

A visitor id and a user id given together must be linked; a session read on
someone's behalf must be theirs (its visitor, or the user that visitor is linked
to); a visitor's stream is never read as a session. Refusals append nothing.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from chatledger import (
    ChatLedger,
    IdentityMismatchError,
    ManualClock,
    SessionOwnershipError,
    UnknownSessionError,
)

from .helpers import log_head, visitor_stream_id


@pytest.fixture
def story(ledger: ChatLedger, clock: ManualClock) -> dict[str, object]:
    anon = ledger.receive("vA", "before login")
    clock.advance(hours=1)
    after = ledger.receive("vA", "after a break")
    ledger.link_identity("vA", "uA")
    b = ledger.receive("vB", "someone else")
    ledger.link_identity("vB", "uB")
    ledger.catch_up()
    return {"anon": anon.session_id, "after": after.session_id, "b": b.session_id}


def test_a_visitor_named_with_a_user_it_is_not_linked_to_is_refused(ledger: ChatLedger, story: dict) -> None:
    head = log_head(ledger)
    # the case: A's (post-login) session, read with another user's visitor and A's user id
    with pytest.raises(IdentityMismatchError, match="vB"):
        ledger.session(story["after"], visitor_id="vB", user_id="uA")
    with pytest.raises(IdentityMismatchError):
        ledger.session(story["after"], visitor_id="vA", user_id="uB")
    with pytest.raises(IdentityMismatchError):
        ledger.session(story["b"], visitor_id="vA", user_id="uB")
    with pytest.raises(IdentityMismatchError):
        ledger.transcript(story["after"], visitor_id="vB", user_id="uA")
    with pytest.raises(IdentityMismatchError):
        ledger.transcript(visitor_id="vB", user_id="uA")
    with pytest.raises(IdentityMismatchError):
        ledger.session(story["after"], visitor_id="nobody", user_id="uA")
    assert log_head(ledger) == head


def test_the_owner_reads_with_any_true_combination(ledger: ChatLedger, story: dict) -> None:
    for sid in (story["anon"], story["after"]):
        assert ledger.session(sid, visitor_id="vA").session_id == sid
        assert ledger.session(sid, user_id="uA").session_id == sid  # pre-login sessions too
        assert ledger.session(sid, visitor_id="vA", user_id="uA").session_id == sid
    texts = [m.text for m in ledger.transcript(visitor_id="vA", user_id="uA").messages]
    assert texts == ["before login", "after a break"]


def test_strangers_are_refused_whichever_id_they_use(ledger: ChatLedger, story: dict) -> None:
    for sid in (story["anon"], story["after"]):
        for who in ({"visitor_id": "vB"}, {"user_id": "uB"}, {"visitor_id": "vB", "user_id": "uB"}):
            with pytest.raises(SessionOwnershipError):
                ledger.session(sid, **who)
    with pytest.raises(SessionOwnershipError):
        ledger.receive("vB", "let me in", session_id=story["after"])


def test_a_visitor_stream_is_never_read_as_a_session(ledger: ChatLedger, story: dict) -> None:
    stream = visitor_stream_id("vA")
    with pytest.raises(UnknownSessionError):
        ledger.session_events(stream)
    with pytest.raises(UnknownSessionError):
        ledger.session(stream)
    with pytest.raises(UnknownSessionError):
        ledger.session(stream, visitor_id="vA")


def test_a_later_device_of_the_user_reads_the_users_sessions(ledger: ChatLedger, clock: ManualClock, story: dict) -> None:
    clock.advance(timedelta(minutes=1))
    ledger.receive("vA-phone", "from my phone")
    ledger.link_identity("vA-phone", "uA")
    assert ledger.session(story["anon"], visitor_id="vA-phone").visitor_id == "vA"
    with pytest.raises(SessionOwnershipError):
        ledger.session(story["b"], visitor_id="vA-phone")
