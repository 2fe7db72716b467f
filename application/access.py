"""Who may read or write a session: its visitor, or the user that visitor is linked to."""

from __future__ import annotations

from ..domain.errors import IdentityMismatchError, SessionOwnershipError
from ..domain.session import Session
from .unit_of_work import UnitOfWork


def caller_user(uow: UnitOfWork, visitor_id: str | None, user_id: str | None) -> str | None:
    """The user a caller acts as; a visitor id given with a user id must be
    linked to that user (:class:`IdentityMismatchError` otherwise)."""
    if visitor_id is None or user_id is not None:
        if visitor_id is not None:
            visitor = uow.get_visitor(visitor_id)
            if visitor is None or visitor.user_id != user_id:
                raise IdentityMismatchError(visitor_id, user_id)  # type: ignore[arg-type]
        return user_id
    visitor = uow.get_visitor(visitor_id)
    return visitor.user_id if visitor is not None else None


def check_owner(
    uow: UnitOfWork, session: Session, visitor_id: str | None, user_id: str | None
) -> None:
    """Refuse unless ``session`` belongs to the caller: its visitor, or the
    user that visitor is (now) linked to. Every id the caller gives must
    belong together, or nothing is read or written."""
    if visitor_id is None and user_id is None:
        return
    user = caller_user(uow, visitor_id, user_id)
    if visitor_id is not None and session.visitor_id == visitor_id:
        return
    if user is not None:
        if session.user_id == user:
            return
        owner = uow.get_visitor(session.visitor_id)
        if owner is not None and owner.user_id == user:
            return
    raise SessionOwnershipError(session.id, visitor_id=visitor_id, user_id=user_id)


__all__ = ["caller_user", "check_owner"]
