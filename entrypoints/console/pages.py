"""The console's HTML: one layout, charts as ``<canvas data-chart>`` specs drawn by Chart.js.

Every chart comes with its axis titles, a sentence saying what it shows and a table of the same
figures (readable without scripts, and what the browser tests compare with the Python API).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape
from typing import Any

from ... import Analytics, SessionState, TimeoutCurve
from ..report import duration_histogram

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#f6f7f9}
header{background:#1f2a44;color:#fff;padding:.7rem 1.5rem;display:flex;gap:1.5rem;align-items:center}
header a{color:#cfe0ff;text-decoration:none;font-weight:600}header b{font-size:1.1rem}
main{max-width:72rem;margin:0 auto;padding:1rem 1.5rem}
.meta{color:#555}.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.8rem}
.kpi{background:#fff;border:1px solid #dde;border-radius:.5rem;padding:.7rem}
.kpi b{display:block;font-size:1.5rem}.kpi small{color:#555}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(30rem,1fr));gap:1rem;margin-top:1rem}
figure{margin:0;background:#fff;border:1px solid #dde;border-radius:.5rem;padding:.8rem}
figcaption{font-weight:600}figure p{color:#444;margin:.3rem 0 .6rem;font-size:.92rem}
.plot{position:relative;height:16rem}
details{margin-top:.4rem;font-size:.9rem}table{border-collapse:collapse;font-size:.9rem}
td,th{border-bottom:1px solid #e3e4e8;padding:.2rem .6rem;text-align:left}
.msg{background:#fff;border:1px solid #dde;border-radius:.5rem;padding:.5rem .8rem;margin:.4rem 0}
.msg.user{border-left:4px solid #4a78c2}.msg.assistant{border-left:4px solid #3a8a5c}
.msg small{color:#666}input[type=range]{width:100%}.erased{color:#999;font-style:italic}
"""


def layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)} · chatledger console</title><style>{CSS}</style></head><body>"
        "<header><b>chatledger console</b><a href='/console/'>Analytics</a>"
        "<a href='/console/sessions'>Sessions</a><a href='/console/audit'>Audit</a></header>"
        f"<main><h1>{escape(title)}</h1>{body}</main>"
        "<script src='/console/static/chart.umd.min.js'></script>"
        "<script src='/console/static/console.js'></script></body></html>"
    )


def chart(
    chart_id: str,
    title: str,
    explain: str,
    kind: str,
    x_title: str,
    y_title: str,
    rows: Sequence[tuple[str, int | float]],
    *,
    marker: str | None = None,
    marker_label: str = "",
) -> str:
    """A figure: the chart, what it shows, and its figures as a table."""
    spec: dict[str, Any] = {
        "type": kind,
        "x_title": x_title,
        "y_title": y_title,
        "labels": [r[0] for r in rows],
        "series": [{"label": y_title, "data": [r[1] for r in rows], "color": "#4a78c2"}],
    }
    if marker is not None:
        spec |= {
            "marker": marker,
            "marker_y": dict(rows).get(marker, 0),
            "marker_label": marker_label,
        }
    table = "".join(
        f"<tr><td>{escape(label)}</td><td data-value>{value}</td></tr>" for label, value in rows
    )
    return (
        f"<figure id='{chart_id}'><figcaption>{escape(title)}</figcaption><p>{escape(explain)}</p>"
        f"<div class=plot><canvas data-chart='{escape(json.dumps(spec), quote=True)}'></canvas></div>"
        f"<details><summary>Figures</summary><table><tr><th>{escape(x_title)}</th>"
        f"<th>{escape(y_title)}</th></tr>{table}</table></details></figure>"
    )


def kpi(name: str, value: object, explain: str) -> str:
    return f"<div class=kpi data-kpi='{escape(name)}'><small>{escape(name)}</small><b>{escape(str(value))}</b><small>{escape(explain)}</small></div>"


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def minutes(t: timedelta) -> str:
    return f"{t.total_seconds() / 60:g} min"


def analytics_page(a: Analytics, curve: TimeoutCurve, configured: timedelta) -> str:
    e = a.engagement
    rules = [
        f"at least {e.min_duration.total_seconds():g} s from first to last message"
        if e.min_duration
        else "",
        f"at least {e.min_user_messages} user messages" if e.min_user_messages else "",
        "a completed task" if e.completed_task else "",
    ]
    engaged_def = "Engaged: a session with " + " or ".join(r for r in rules if r) + "."
    meta = (
        f"<p class=meta data-position='{a.position}'>As of log position {a.position} (head {a.head}, "
        f"lag {a.lag}); sessions started in [{a.start or 'the beginning'}, {a.end or 'now'}), "
        f"state as of {a.as_of:%Y-%m-%d %H:%M} UTC.</p>"
    )
    kpis = "".join(
        [
            kpi("Sessions", a.sessions, "conversations started in the period"),
            kpi("Visitors", a.visitors, "distinct visitors with a session"),
            kpi("Returning visitors", a.returning_visitors, "had a session before this one"),
            kpi("Engaged share", f"{a.engagement_rate:.1%}", engaged_def),
            kpi("Identity-link rate", f"{a.identity_link_rate:.1%}", "visitors linked to a user"),
            kpi("Median duration", f"{a.median_duration_s:g} s", "first to last message"),
        ]
    )
    days = [(d.isoformat(), n) for d, n in sorted(a.sessions_per_day.items())]
    hours = [(f"{h:02d}:00", a.sessions_per_hour.get(h, 0)) for h in range(24)]
    channels = sorted(a.sessions_per_channel.items(), key=lambda kv: -kv[1])
    reasons = sorted(a.end_reasons.items(), key=lambda kv: -kv[1])
    sens = [(minutes(p.timeout), p.sessions) for p in curve.points]
    charts = "".join(
        [
            chart(
                "per-day",
                "Sessions per day",
                "Conversations started each UTC day.",
                "bar",
                "Day (UTC)",
                "Sessions",
                days,
            ),
            chart(
                "visitors",
                "New and returning visitors",
                "Visitors whose first session is in the period (new) and those who came back (returning).",
                "bar",
                "Visitors",
                "Visitors",
                [("new", a.new_visitors), ("returning", a.returning_visitors)],
            ),
            chart(
                "durations",
                "Session lengths",
                "Time from a session's first to its last message; 0 s is a session of one message.",
                "bar",
                "Duration",
                "Sessions",
                duration_histogram(a.durations_s),
            ),
            chart(
                "end-reasons",
                "How sessions ended",
                "Every end reason recorded (timed_out: idle past "
                "the timeout; active: not ended yet).",
                "bar",
                "End reason",
                "Sessions",
                reasons,
            ),
            chart(
                "hours",
                "Sessions by hour of day",
                "Start hour (UTC) of each session.",
                "bar",
                "Hour of day (UTC)",
                "Sessions",
                hours,
            ),
            chart(
                "channels",
                "Channels",
                "Sessions per channel.",
                "bar",
                "Channel",
                "Sessions",
                channels,
            ),
            chart(
                "timeouts",
                "Timeout sensitivity",
                "How many conversations the same messages make under another idle timeout "
                f"(re-sessionized, read only); the configured timeout is {minutes(configured)} (marked).",
                "line",
                "Idle timeout",
                "Conversations",
                sens,
                marker=minutes(configured),
                marker_label="configured timeout",
            ),
        ]
    )
    return layout(
        "Analytics", meta + f"<div class=kpis>{kpis}</div><div class=charts>{charts}</div>"
    )


def session_list_page(
    rows: list[tuple[str, str, str, str, str, int]], query: dict[str, str]
) -> str:
    form = "".join(
        f"<label>{escape(k)} <input name={k} value='{escape(query.get(k, ''))}'></label> "
        for k in ("user_id", "visitor_id", "start", "end")
    )
    body = "".join(
        f"<tr><td><a href='/console/sessions/{sid}'>{sid}</a></td><td>{escape(v)}</td><td>{escape(u)}</td>"
        f"<td>{escape(ch)}</td><td>{escape(at)}</td><td>{n}</td></tr>"
        for sid, v, u, ch, at, n in rows
    )
    return layout(
        "Sessions",
        f"<form>{form}<button>Search</button></form><p class=meta>{len(rows)} "
        "sessions (at most 200; pre-login sessions of a user are listed under the user).</p>"
        "<table id=sessions><tr><th>Session</th><th>Visitor</th><th>User</th><th>Channel</th>"
        f"<th>First message</th><th>Messages</th></tr>{body}</table>",
    )


def session_page(
    state: SessionState, times: list[datetime], at_index: int, events: list[tuple[str, str]]
) -> str:
    iso = [t.isoformat() for t in times]
    slider = (
        f"<p>Replay: drag to see the session exactly as it stood at that instant.</p>"
        f"<input id=as-of-slider type=range min=0 max={len(iso) - 1} value={at_index} "
        f"data-times='{escape(json.dumps(iso), quote=True)}'>"
        f"<p>As of <b id=as-of-label>{escape(iso[at_index])}</b></p>"
    )
    msgs = "".join(
        f"<div class='msg {escape(m.role)}' data-message><small>{escape(m.role)} · {m.at:%Y-%m-%d %H:%M:%S}"
        f"</small><div class='{'erased' if m.text == '' else 'text'}'>{escape(m.text) or '(erased)'}</div></div>"
        for m in state.messages
    )
    facts = "".join(
        f"<tr><th>{k}</th><td>{escape(str(v))}</td></tr>"
        for k, v in [
            ("status", state.status),
            ("visitor", state.visitor_id),
            ("user", state.user_id or "—"),
            ("channel", state.channel),
            ("started", state.started_at),
            ("close reason", state.close_reason or "—"),
            ("slots", json.dumps(state.slots)),
            ("open tasks", ", ".join(state.open_tasks) or "—"),
            ("completed tasks", ", ".join(state.completed_tasks) or "—"),
        ]
    )
    ev = "".join(f"<tr><td>{escape(t)}</td><td>{escape(n)}</td></tr>" for t, n in events)
    return layout(
        f"Session {state.session_id}",
        slider + f"<table id=facts>{facts}</table>"
        f"<h2>Transcript</h2><div id=transcript>{msgs}</div>"
        f"<h2>Events</h2><table id=events><tr><th>At</th><th>Event</th></tr>{ev}</table>",
    )


def checked_text(report: Any, now: datetime) -> str:
    """What this check re-hashed and what it trusted, in words."""
    at = f"{now:%Y-%m-%d %H:%M:%S} UTC"
    if not report.trusted_seals:
        return (
            f"Full check at {at}: every event's hash chain ({report.checked} events), every seal "
            f"({report.seals}) and every content key."
        )
    return (
        f"Incremental check at {at}: seals 1–{report.trusted_seals} (log positions 1–"
        f"{report.trusted_through}) were verified by this server's checks since "
        f"{report.trusted_since[:19].replace('T', ' ')} UTC and are trusted: their seal rows are "
        f"unchanged, their events were not re-hashed now. Checked now: the {report.checked} events "
        f"after position {report.trusted_through}, seals {report.trusted_seals + 1}–{report.seals} "
        "and the content keys those events use. A change inside the trusted positions shows in a "
        "full check only: the button below, or <code>chatledger audit verify</code>."
    )


def audit_page(report: Any, now: datetime) -> str:
    fields = [
        "scope",
        "checked",
        "break_count",
        "sealed_through",
        "seal_root",
        "seals",
        "tail_count",
        "tail_age_s",
        "trusted_seals",
        "trusted_through",
        "trusted_since",
    ]
    rows = "".join(
        f"<tr><th>{f}</th><td>{escape(str(getattr(report, f, '')))}</td></tr>" for f in fields
    )
    first = report.first_break
    verdict = "The log verifies: no break." if report.ok else f"First break: {escape(str(first))}"
    return layout(
        "Audit",
        f"<p id=verdict>{verdict}</p><p id=checked>{checked_text(report, now)}</p>"
        "<form method=post action='/console/audit'><button id=full-check>Full re-check</button> "
        "(every event, seal and key; seconds on a large log)</form>"
        f"<table id=verify>{rows}</table>"
        "<p>Export a user's bundle: <code>chatledger audit export --user-id …</code>.</p>",
    )


def message_page(title: str, text: str) -> str:
    return layout(title, f"<p>{escape(text)}</p>")


def login_page(error: str = "") -> str:
    return layout(
        "Sign in",
        (f"<p class=erased>{escape(error)}</p>" if error else "")
        + "<form method=post action='/console/login'><label>API key <input name=key "
        "type=password size=60></label> <button>Sign in</button></form>",
    )
