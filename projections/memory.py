"""Cross-session memory: what the bot remembers about a person.

One profile per *subject*: ``user:<user_id>`` for a linked person, or
``visitor:<visitor_id>`` for an anonymous visitor. A session's events feed the
profile of its visitor's subject at the time of the event. When a visitor is
linked, its visitor profile is merged into the user's and removed, so anonymous
reads (by visitor id) never reveal what belongs to a user. Visitor and user ids
are kept within their tenant (``domain.tenancy.scoped_key``: the same id in two
tenants is two people; the default tenant's ids are stored as they are, and no
default-tenant id is ever a named tenant's key), and every row carries its
``tenant``: a visitor's user is keyed in the visitor row's tenant, and the reads
filter by it; no key is parsed back into a tenant.

Preferences come from slots set with ``scope="user"``; the latest value of a
key wins (by business time) when profiles merge. The *last conversation* is
the most recently active session that has closed (timed out or ended): its
slots and its unfinished tasks, so a returning user can be offered to finish
them. (A session's timeout is recorded at the latest when the visitor's next
message arrives, so the previous conversation is closed by the time a bot
greets a returning visitor.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from eventsourcing.utils import get_topic
from sqlalchemy import select

from ..domain.batching import batched
from ..domain.retention import RetentionRecord
from ..domain.session import Session
from ..domain.tenancy import scoped_key
from ..domain.visitor import Visitor
from .memory_tables import (
    Base,
    profiles_table,
    sessions_table,
    user_subject,
    visitor_subject,
    visitors_table,
)
from .read_model import HandlerTableReadModel, batch_ids
from .view import SQLView
from .writers import RowBuffer


class UserMemory(HandlerTableReadModel):
    """Projection of session and visitor events into ``memory_profiles``."""

    name = "memory"
    metadata = Base.metadata
    # Slot values (carried or set); message events only mark activity.
    personal_fields = (Session.Started, Session.SlotSet)
    supports_shadow_rebuild = True  # writes through self.view.table(...)

    def __init__(self, view: SQLView) -> None:
        super().__init__(view)
        table = view.table
        self.sessions = RowBuffer(table(sessions_table), "session_id")
        self.visitors = RowBuffer(table(visitors_table), "visitor_uuid")
        self.profiles = RowBuffer(table(profiles_table), "subject")
        self.visitors_table = table(visitors_table)
        self.links: dict[str, str | None] = {}  # visitor_id -> user_id, this batch

    def discard(self) -> None:
        self.sessions.clear()
        self.visitors.clear()
        self.profiles.clear()
        self.links.clear()

    def prepare(self, events: Sequence[Any]) -> None:
        conn = self.view.conn
        sessions, visitors = batch_ids(events, Session.Started, Visitor.Registered)
        self.sessions.load(conn, sessions)
        self.visitors.load(conn, visitors)
        registered = {_key(e) for e in events if isinstance(e, Visitor.Registered)}
        for key in registered:
            self.links[key] = None
        for row in self.visitors.rows():
            self.links[row["visitor_id"]] = row["user_id"]
        wanted = {_key(e) for e in events if isinstance(e, Session.Started)}
        wanted |= {r["visitor_id"] for r in self.sessions.rows()}
        missing = [v for v in wanted - registered if v not in self.links]
        for chunk in batched(missing):
            visitors_t = self.visitors_table
            found: dict[str, str | None] = dict(
                conn.execute(
                    select(visitors_t.c.visitor_id, visitors_t.c.user_id).where(
                        visitors_t.c.visitor_id.in_(chunk)
                    )
                ).all()
            )
            for v in chunk:
                self.links[v] = found.get(v)
        subjects = {self._subject(v) for v in wanted}
        subjects |= {user_subject(r["user_id"]) for r in self.visitors.rows() if r["user_id"]}
        for e in events:
            is_link = isinstance(e, Visitor.IdentityLinked)
            linked = self.visitors.cached(str(e.originator_id)) if is_link else None
            if linked is not None:
                subjects.add(user_subject(scoped_key(linked["tenant"], e.user_id)))
        subjects |= {visitor_subject(r["visitor_id"]) for r in self.visitors.rows()}
        self.profiles.load(conn, sorted(subjects))

    def flush(self) -> None:
        conn = self.view.conn
        self.sessions.flush(conn)
        self.visitors.flush(conn)
        self.profiles.flush(conn)

    # ---- lookups --------------------------------------------------------

    def _user_of(self, visitor_id: str) -> str | None:
        if visitor_id not in self.links:
            visitors_t = self.visitors_table
            row = self.view.conn.execute(
                select(visitors_t.c.user_id).where(visitors_t.c.visitor_id == visitor_id)
            ).first()
            self.links[visitor_id] = row[0] if row else None
        return self.links[visitor_id]

    def _subject(self, visitor_id: str) -> str:
        user = self._user_of(visitor_id)
        return user_subject(user) if user is not None else visitor_subject(visitor_id)

    def _session(self, e: Any) -> dict[str, Any] | None:
        sid = str(e.originator_id)
        row = self.sessions.cached(sid) or self.sessions.get(self.view.conn, sid)
        if row is not None:
            self.sessions.changed(sid)
        return row

    def _touch(self, session: dict[str, Any], at: datetime) -> dict[str, Any] | None:
        """Record activity of ``session`` on its subject's profile."""
        session["last_activity_at"] = at
        subject = self._subject(session["visitor_id"])
        profile = self.profiles.get(self.view.conn, subject)
        if profile is None:
            return None
        if at >= profile["last_seen_at"]:
            profile["last_seen_at"] = at
            profile["last_session_id"] = session["session_id"]
        self.profiles.changed(subject)
        return profile

    # ---- handlers -------------------------------------------------------

    def visitor_registered(self, e: Visitor.Registered) -> None:
        self.visitors.add(
            {"visitor_uuid": str(e.originator_id), "tenant": e.tenant, "visitor_id": _key(e), "user_id": None}
        )
        self.links[_key(e)] = None

    def visitor_linked(self, e: Visitor.IdentityLinked) -> None:
        visitor = self.visitors.get(self.view.conn, str(e.originator_id))
        if visitor is None:  # pragma: no cover - Registered always comes first
            return
        user = scoped_key(visitor["tenant"], e.user_id)  # the user, in the visitor's tenant
        visitor["user_id"] = user
        self.visitors.changed(visitor["visitor_uuid"])
        self.links[visitor["visitor_id"]] = user
        old_key = visitor_subject(visitor["visitor_id"])
        old = self.profiles.get(self.view.conn, old_key)
        if old is None:
            return
        self.profiles.delete(old_key)
        new_key = user_subject(user)
        new = self.profiles.get(self.view.conn, new_key)
        if new is None:
            self.profiles.add({**old, "subject": new_key})
            return
        merge(new, old)
        self.profiles.changed(new_key)

    def started(self, e: Session.Started) -> None:
        visitor = _key(e)
        if e.user_id is not None and self._user_of(visitor) is None:  # pragma: no cover
            self.links[visitor] = scoped_key(e.tenant, e.user_id)
        slots = {k: [v.value, v.scope] for k, v in e.carried_slots.items()}
        session = self.sessions.add(
            {
                "session_id": str(e.originator_id),
                "tenant": e.tenant,
                "visitor_id": visitor,
                "slots": slots,
                "open_tasks": [],
                "status": "active",
                "last_activity_at": e.occurred_at,
            }
        )
        subject = self._subject(visitor)
        profile = self.profiles.get(self.view.conn, subject)
        if profile is None:
            profile = self.profiles.add(
                {
                    "subject": subject,
                    "tenant": e.tenant,
                    "preferences": {},
                    "session_count": 0,
                    "first_seen_at": e.occurred_at,
                    "last_seen_at": e.occurred_at,
                    "last_session_id": session["session_id"],
                    "left_off_session_id": None,
                    "left_off_at": None,
                    "left_off_status": None,
                    "last_slots": {},
                    "unfinished_tasks": [],
                }
            )
        profile["session_count"] += 1
        profile["first_seen_at"] = min(profile["first_seen_at"], e.occurred_at)
        stamp = _stamp(e.occurred_at)
        for key, slot in e.carried_slots.items():
            if slot.scope == "user":
                profile["preferences"][key] = [slot.value, stamp, visitor]
        self._touch(session, e.occurred_at)

    def activity(self, e: Any) -> None:
        session = self._session(e)
        if session is not None:
            self._touch(session, e.occurred_at)

    def slot_set(self, e: Session.SlotSet) -> None:
        session = self._session(e)
        if session is None:
            return
        session["slots"] = {**session["slots"], e.key: [e.value, e.scope]}
        profile = self._touch(session, e.occurred_at)
        if profile is not None and e.scope == "user":
            profile["preferences"] = {
                **profile["preferences"],
                e.key: [e.value, _stamp(e.occurred_at), session["visitor_id"]],
            }

    def slot_cleared(self, e: Session.SlotCleared) -> None:
        session = self._session(e)
        if session is None:
            return
        slots = dict(session["slots"])
        removed = slots.pop(e.key, None)
        session["slots"] = slots
        profile = self._touch(session, e.occurred_at)
        if profile is not None and removed is not None and removed[1] == "user":
            profile["preferences"] = {
                k: v for k, v in profile["preferences"].items() if k != e.key
            }

    def task_started(self, e: Session.TaskStarted) -> None:
        session = self._session(e)
        if session is not None:
            session["open_tasks"] = [*session["open_tasks"], e.task]
            self._touch(session, e.occurred_at)

    def task_completed(self, e: Session.TaskCompleted) -> None:
        session = self._session(e)
        if session is not None:
            session["open_tasks"] = [t for t in session["open_tasks"] if t != e.task]
            self._touch(session, e.occurred_at)

    def closed(self, e: Session.TimedOut | Session.Ended) -> None:
        """A closed session is where its subject left off, if it is their latest."""
        session = self._session(e)
        if session is None:
            return
        session["status"] = "timed_out" if isinstance(e, Session.TimedOut) else "ended"
        subject = self._subject(session["visitor_id"])
        profile = self.profiles.get(self.view.conn, subject)
        if profile is None:
            return
        at = session["last_activity_at"]
        if profile["left_off_at"] is None or at >= profile["left_off_at"]:
            profile["left_off_session_id"] = session["session_id"]
            profile["left_off_at"] = at
            profile["left_off_status"] = session["status"]
            profile["last_slots"] = {k: v[0] for k, v in session["slots"].items()}
            profile["unfinished_tasks"] = list(session["open_tasks"])
            self.profiles.changed(subject)


def _archived(self: UserMemory, e: Session.Archived) -> None:
    """Retention archived the session: drop its working row; the profile stays."""
    sid = str(e.originator_id)
    if self.sessions.get(self.view.conn, sid) is not None:
        self.sessions.delete(sid)


def _removed(self: UserMemory, e: RetentionRecord.Removed) -> None:
    """Log retention removed the sessions: as archived (for a model behind it)."""
    for removed in e.sessions:
        sid = str(removed.session_id)
        if self.sessions.get(self.view.conn, sid) is not None:
            self.sessions.delete(sid)


def _data_erased(self: UserMemory, e: Visitor.DataErased) -> None:
    """Blank what the erased visitors said: their sessions' slot values, and in
    each profile they fed, the preferences they set and the left-off slots of
    their sessions.

    A user's profile merges all of the user's visitors; erasing one visitor (a
    device) leaves what the others said. Erasing the user names every visitor.
    Slot names, counts and times stay (as in the log).
    """
    conn = self.view.conn
    erased_sessions = {str(sid) for sid in e.receipt.session_ids}
    erased_visitors = set(e.receipt.key_owners)  # the visitors, within the tenant
    for sid in erased_sessions:
        session = self.sessions.get(conn, sid)
        if session is not None:
            session["slots"] = {k: [None, v[1]] for k, v in session["slots"].items()}
            self.sessions.changed(sid)
    subjects = [visitor_subject(v) for v in e.receipt.key_owners]
    if e.receipt.user_id is not None:
        subjects.append(user_subject(scoped_key(e.receipt.tenant, e.receipt.user_id)))
    for subject in subjects:
        profile = self.profiles.get(conn, subject)
        if profile is None:
            continue
        profile["preferences"] = {
            k: [None, *v[1:]] if len(v) < 3 or v[2] in erased_visitors else v
            for k, v in profile["preferences"].items()
        }
        if profile["left_off_session_id"] in erased_sessions:
            profile["last_slots"] = {k: None for k in profile["last_slots"]}
        self.profiles.changed(subject)


def _key(e: Session.Started | Visitor.Registered) -> str:
    """The visitor of ``e`` as this read model keys it: within its tenant."""
    return scoped_key(e.tenant, e.visitor_id)


def _stamp(at: datetime) -> str:
    """A sortable UTC time stamp for JSON (preferences remember when they were set)."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Merge ``other``'s profile into ``into`` (a visitor's into its user's)."""
    into["session_count"] += other["session_count"]
    into["first_seen_at"] = min(into["first_seen_at"], other["first_seen_at"])
    preferences = dict(into["preferences"])
    for key, entry in other["preferences"].items():
        if key not in preferences or entry[1] > preferences[key][1]:
            preferences[key] = entry
    into["preferences"] = preferences
    if other["last_seen_at"] > into["last_seen_at"]:
        into["last_seen_at"] = other["last_seen_at"]
        into["last_session_id"] = other["last_session_id"]
    if other["left_off_at"] is not None and (
        into["left_off_at"] is None or other["left_off_at"] > into["left_off_at"]
    ):
        for key in (
            "left_off_session_id",
            "left_off_at",
            "left_off_status",
            "last_slots",
            "unfinished_tasks",
        ):
            into[key] = other[key]


_HANDLERS: dict[type, Any] = {
    Session.Started: UserMemory.started,
    Session.MessageReceived: UserMemory.activity,
    Session.MessageSent: UserMemory.activity,
    Session.SlotSet: UserMemory.slot_set,
    Session.SlotCleared: UserMemory.slot_cleared,
    Session.TaskStarted: UserMemory.task_started,
    Session.TaskCompleted: UserMemory.task_completed,
    Session.TimedOut: UserMemory.closed,
    Session.Ended: UserMemory.closed,
    Session.Archived: _archived,
    RetentionRecord.Removed: _removed,
    Visitor.Registered: UserMemory.visitor_registered,
    Visitor.IdentityLinked: UserMemory.visitor_linked,
    Visitor.DataErased: _data_erased,
}


UserMemory.handlers = _HANDLERS
UserMemory.topics = tuple(get_topic(t) for t in _HANDLERS)
