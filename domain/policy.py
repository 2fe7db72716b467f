"""How long a session lives: the :class:`SessionPolicy`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import InvalidFieldError, InvalidPolicyError
from .validation import MAX_DURATION, check_id


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

    @classmethod
    def of(cls, policy: SessionPolicy) -> AppliedPolicy:
        return cls(
            idle_timeout_s=policy.idle_timeout.total_seconds(),
            task_idle_timeout_s=policy.effective_task_idle_timeout.total_seconds(),
            max_session_length_s=(
                policy.max_session_length.total_seconds() if policy.max_session_length else None
            ),
        )
