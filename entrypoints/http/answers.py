"""What the service answers: the API's own pydantic models, and the few answers it shapes itself.

Every endpoint declares its ``response_model`` (so ``/openapi.json`` is typed) and returns
:func:`json_of` of what the ledger gave: the model is serialised once, by pydantic's
``model_dump_json`` (Rust), and FastAPI neither validates the answer again nor walks it through
``jsonable_encoder``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response

from ... import SessionState


def json_of(model: BaseModel, status_code: int = 200) -> Response:
    """``model`` as the JSON body of a response, serialised once."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


def json_list(adapter: TypeAdapter[Any], items: Any) -> Response:
    return Response(adapter.dump_json(items), media_type="application/json")


class ProjectionState(BaseModel):
    """One read model: its position in the log, the log's head, the lag and the events it
    could not apply."""

    name: str
    position: int
    head: int
    lag: int
    failed: int


class ChainBreakOut(BaseModel):
    kind: str
    position: int
    originator_id: str
    version: int
    detail: str


class Verification(BaseModel):
    """``verify``'s report: ``ok`` when every chain and seal holds."""

    ok: bool
    scope: str
    checked: int
    head_position: int
    head_hash: str
    break_count: int
    breaks: list[ChainBreakOut]
    sealed_through: int
    seal_root: str
    seals: int
    tail_count: int
    tail_age_s: float | None

    @classmethod
    def of(cls, report: Any) -> Verification:
        return cls(
            ok=report.ok, breaks=[ChainBreakOut(**vars(b)) for b in report.breaks],
            **{name: getattr(report, name) for name in (
                "scope", "checked", "head_position", "head_hash", "break_count", "sealed_through",
                "seal_root", "seals", "tail_count", "tail_age_s",
            )},
        )


class HistoryEntry(BaseModel):
    """One stored event of a session (its class, version, business time) and the session's
    state right after it."""

    event: str
    version: int
    occurred_at: datetime
    state: SessionState

    @classmethod
    def of(cls, step: Any) -> HistoryEntry:
        event = step.event
        return cls(
            event=type(event).__qualname__, version=event.originator_version,
            occurred_at=event.occurred_at, state=step.state,
        )


class SweepBacklog(BaseModel):
    """Sessions past their deadline that no sweep has timed out yet (as the sweeper's index
    of live sessions has it: behind by its projection lag)."""

    due: int


class SweepDone(BaseModel):
    timed_out: int


class CaughtUp(BaseModel):
    applied: int


class Ready(BaseModel):
    status: str
    lag: dict[str, int]


class Health(BaseModel):
    status: str


HISTORY = TypeAdapter(list[HistoryEntry])
PROJECTIONS = TypeAdapter(list[ProjectionState])

__all__ = [
    "HISTORY", "PROJECTIONS", "CaughtUp", "ChainBreakOut", "Health", "HistoryEntry", "ProjectionState", "Ready",
    "SweepBacklog", "SweepDone", "Verification", "json_list", "json_of",
]
