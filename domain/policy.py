"""How long a session lives: the :class:`SessionPolicy`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import InvalidFieldError, InvalidPolicyError
from .validation import MAX_DURATION, check_id


TimeoutReason = Literal["idle", "max_length"]


def session_deadline(
    *,
    started_at: datetime,
    last_activity_at: datetime,
    tasks_open: bool,
    idle_timeout: timedelta,
    task_idle_timeout: timedelta,
    max_session_length: timedelta | None,
) -> tuple[datetime, TimeoutReason]:
    """The expiry rule: when a session times out if nothing else happens, and why.

    Last activity plus the idle timeout (the longer task timeout while a task is
    open), or the hard cap from the first message if that comes first. The
    session, the active-session index and analytics all ask this function.
    """
    deadline = last_activity_at + (task_idle_timeout if tasks_open else idle_timeout)
    if max_session_length is not None:
        cap = started_at + max_session_length
        if cap < deadline:
            return cap, "max_length"
    return deadline, "idle"


def is_past_deadline(deadline: datetime, at: datetime) -> bool:
    """Idle time that *exceeds* the timeout times the session out; exactly the timeout does not."""
    return at > deadline


class SessionPolicy(BaseModel):
    """The timeout rules of one bot.

    - ``idle_timeout``: a session idle for longer than this is over (default 30 min).
    - ``task_idle_timeout``: the idle timeout while a task is in progress, so a user
      who pauses mid-task keeps their context (default: twice ``idle_timeout``).
    - ``max_session_length``: optional hard cap from the first message.
    - ``carry_over_slots``: slot names copied into the visitor's next session.

    A session records the policy it started under, so changing the policy later
    never changes how stored history replays.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    idle_timeout: timedelta = timedelta(minutes=30)
    task_idle_timeout: timedelta | None = None
    max_session_length: timedelta | None = None
    carry_over_slots: frozenset[str] = frozenset()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}"
                for e in err.errors()
            )
            raise InvalidPolicyError(f"Invalid session policy ({problems}).") from err

    @field_validator("idle_timeout", "task_idle_timeout", "max_session_length")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and not timedelta(0) < value <= MAX_DURATION:
            msg = f"must be a positive duration of at most {MAX_DURATION.days} days, got {value}"
            raise ValueError(msg)
        return value

    @field_validator("carry_over_slots")
    @classmethod
    def _slot_names(cls, value: frozenset[str]) -> frozenset[str]:
        for name in value:
            try:
                check_id("carry_over_slots", name)
            except InvalidFieldError as err:
                raise ValueError(str(err).removesuffix(" Nothing was written.")) from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> SessionPolicy:
        if self.task_idle_timeout is not None and self.task_idle_timeout < self.idle_timeout:
            msg = "task_idle_timeout must not be shorter than idle_timeout"
            raise ValueError(msg)
        if self.max_session_length is not None and self.max_session_length < self.idle_timeout:
            msg = "max_session_length must not be shorter than idle_timeout"
            raise ValueError(msg)
        return self

    @property
    def effective_task_idle_timeout(self) -> timedelta:
        return self.task_idle_timeout or self.idle_timeout * 2


class AppliedPolicy(BaseModel):
    """The policy as recorded in a session's start event (plain seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    idle_timeout_s: float
    task_idle_timeout_s: float
    max_session_length_s: float | None = None

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> AppliedPolicy:
        return self  # frozen, numbers only: sharing it is a copy

    def deadline(
        self, started_at: datetime, last_activity_at: datetime, *, tasks_open: bool
    ) -> tuple[datetime, TimeoutReason]:
        """:func:`session_deadline` under this policy."""
        cap = self.max_session_length_s
        return session_deadline(
            started_at=started_at,
            last_activity_at=last_activity_at,
            tasks_open=tasks_open,
            idle_timeout=timedelta(seconds=self.idle_timeout_s),
            task_idle_timeout=timedelta(seconds=self.task_idle_timeout_s),
            max_session_length=None if cap is None else timedelta(seconds=cap),
        )

    @classmethod
    def of(cls, policy: SessionPolicy) -> AppliedPolicy:
        return cls(
            idle_timeout_s=policy.idle_timeout.total_seconds(),
            task_idle_timeout_s=policy.effective_task_idle_timeout.total_seconds(),
            max_session_length_s=(
                policy.max_session_length.total_seconds() if policy.max_session_length else None
            ),
        )
