"""A self-contained HTML analytics report: inline SVG charts, no scripts, no network."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from .. import Analytics

DURATION_BUCKETS: list[tuple[str, float]] = [
    ("0 s", 0.0),
    ("< 10 s", 10.0),
    ("10–30 s", 30.0),
    ("30 s–1 min", 60.0),
    ("1–5 min", 300.0),
    ("5–15 min", 900.0),
    ("15–30 min", 1800.0),
    ("> 30 min", float("inf")),
]

COLORS = {
    "timed_out": "#e0a030",
    "ended": "#3a8a5c",
    "abandoned": "#c8453c",
    "active": "#4a78c2",
    "new": "#4a78c2",
    "returning": "#7a4ab0",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:60rem;
color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}.meta{color:#666;margin-top:0}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:.8rem;margin:1.5rem 0}
.kpi{background:#f4f5f7;border-radius:.5rem;padding:.8rem}.kpi b{display:block;font-size:1.4rem}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(26rem,1fr));gap:1.2rem}
figure{margin:0;background:#fff;border:1px solid #e3e4e8;border-radius:.5rem;padding:.8rem}
figcaption{font-weight:600;margin-bottom:.4rem}svg{width:100%;height:auto;display:block}
svg text{font-size:11px;fill:#444}.legend span{display:inline-block;margin-right:1rem;font-size:.85rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
"""


def duration_histogram(durations: tuple[float, ...]) -> list[tuple[str, int]]:
    """Count sessions per duration bucket (``0 s`` is single-message sessions)."""
    counts = [0] * len(DURATION_BUCKETS)
    for d in durations:
        if d <= 0:
            counts[0] += 1
            continue
        for i, (_, upper) in enumerate(DURATION_BUCKETS[1:], start=1):
            if d < upper:
                counts[i] += 1
                break
    return [(label, counts[i]) for i, (label, _) in enumerate(DURATION_BUCKETS)]


def bar_chart(chart_id: str, title: str, bars: list[tuple[str, int]], color: str = "#4a78c2") -> str:
    width, height, left, bottom, top = 600, 240, 40, 50, 14
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max((v for _, v in bars), default=0) or 1
    step = plot_w / max(len(bars), 1)
    parts = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    every = max(1, len(bars) // 12)
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / peak
        x = left + i * step + step * 0.1
        parts.append(
            f'<rect class="bar" data-label="{escape(label)}" data-value="{value}" x="{x:.1f}" '
            f'y="{top + plot_h - h:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{escape(label)}: {value}</title></rect>"
        )
        if i % every == 0:
            cx = x + step * 0.4
            parts.append(
                f'<text x="{cx:.1f}" y="{top + plot_h + 14}" text-anchor="end" '
                f'transform="rotate(-35 {cx:.1f} {top + plot_h + 14})">{escape(label)}</text>'
            )
    return _figure(chart_id, title, width, height, "".join(parts))


def share_chart(chart_id: str, title: str, parts_: list[tuple[str, int, str]]) -> str:
    """A horizontal stacked bar (100 %) with a legend: shares of a whole."""
    width, height = 600, 90
    total = sum(v for _, v, _ in parts_) or 1
    x = 0.0
    body = []
    legend = []
    for label, value, color in parts_:
        w = 580 * value / total
        body.append(
            f'<rect class="share" data-label="{escape(label)}" data-value="{value}" x="{10 + x:.1f}" '
            f'y="10" width="{w:.1f}" height="36" fill="{color}"><title>{escape(label)}: {value}'
            f"</title></rect>"
        )
        x += w
        legend.append(
            f'<span><i style="background:{color}"></i>{escape(label)}: {value} '
            f"({100 * value / total:.0f} %)</span>"
        )
    extra = f'<div class="legend">{"".join(legend)}</div>'
    return _figure(chart_id, title, width, height - 30, "".join(body), extra)


def _figure(chart_id: str, title: str, width: int, height: int, body: str, extra: str = "") -> str:
    return (
        f'<figure id="{chart_id}"><figcaption>{escape(title)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">{body}</svg>{extra}</figure>'
    )


def render_report(a: Analytics, *, generated_at: datetime | None = None) -> str:
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    period = (
        f"{a.start:%Y-%m-%d} to {a.end:%Y-%m-%d}" if a.start and a.end
        else f"from {a.start:%Y-%m-%d}" if a.start
        else f"until {a.end:%Y-%m-%d}" if a.end
        else "all time"
    )
    kpis = [
        ("Sessions", f"{a.sessions:,}"),
        ("Visitors", f"{a.visitors:,}"),
        ("Messages / session", f"{a.messages_per_session:.1f}"),
        ("Median duration", f"{a.median_duration_s:.0f} s"),
        ("Engaged", f"{100 * a.engagement_rate:.0f} %"),
        ("Identity linked", f"{100 * a.identity_link_rate:.0f} %"),
    ]
    charts = [
        bar_chart(
            "chart-sessions-per-day",
            "Sessions per day",
            [(f"{day:%Y-%m-%d}", n) for day, n in a.sessions_per_day.items()],
        ),
        bar_chart(
            "chart-duration",
            "Session duration (first to last message)",
            duration_histogram(a.durations_s),
            "#3a8a5c",
        ),
        share_chart(
            "chart-end-reasons",
            "How sessions ended",
            [(k.replace("_", " "), v, COLORS[k]) for k, v in a.end_reasons.items()],
        ),
        share_chart(
            "chart-returning",
            "Returning-visitor share",
            [
                ("first visit only", a.visitors - a.returning_visitors, COLORS["new"]),
                ("returning visitors", a.returning_visitors, COLORS["returning"]),
            ],
        ),
    ]
    lag = "" if a.lag == 0 else f" — {a.lag:,} events not yet projected"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>chatledger report — {escape(period)}</title><style>{CSS}</style></head><body>"
        f"<h1>Conversation analytics</h1><p class=\"meta\">{escape(period)} · generated {generated}"
        f" · log position {a.position:,} of {a.head:,}{escape(lag)}</p>"
        "<div class=\"kpis\">"
        + "".join(f'<div class="kpi">{escape(k)}<b>{escape(v)}</b></div>' for k, v in kpis)
        + "</div><div class=\"charts\">"
        + "".join(charts)
        + "</div></body></html>\n"
    )
