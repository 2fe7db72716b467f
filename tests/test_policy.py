from datetime import timedelta

import pytest
from chatledger import ChatLedgerError, InvalidPolicyError, SessionPolicy


def test_defaults_are_thirty_minutes_and_double_for_tasks() -> None:
    policy = SessionPolicy()
    assert policy.idle_timeout == timedelta(minutes=30)
    assert policy.effective_task_idle_timeout == timedelta(minutes=60)
    assert policy.max_session_length is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"idle_timeout": timedelta(0)},
        {"idle_timeout": timedelta(seconds=-5)},
        {"task_idle_timeout": timedelta(seconds=-1)},
        {"idle_timeout": timedelta(minutes=30), "task_idle_timeout": timedelta(minutes=10)},
        {"max_session_length": timedelta(minutes=5)},
        {"idle_timeout": "soon"},
        {"surprise": 1},
    ],
)
def test_nonsense_policies_are_refused_with_a_clear_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidPolicyError) as info:
        SessionPolicy(**kwargs)
    assert isinstance(info.value, ChatLedgerError)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("Invalid session policy (")


def test_policy_accepts_seconds_and_iso_durations() -> None:
    assert SessionPolicy(idle_timeout=900).idle_timeout == timedelta(minutes=15)
    assert SessionPolicy(idle_timeout="PT15M").idle_timeout == timedelta(minutes=15)
