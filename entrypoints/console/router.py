"""The console's routes: sign in with an API key once (an HttpOnly, SameSite=Strict cookie that
expires), then analytics and sessions (scope ``analyst``) and audit (scope ``auditor``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs
from uuid import UUID

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from ...application.aio import AsyncChatLedger
from ...application.api_keys import DEFAULT_TENANT, ApiKey
from . import pages

COOKIE = "chatledger_console"
COOKIE_AGE = 8 * 3600
STATIC = Path(__file__).parent / "static"
FILES = {"chart.umd.min.js", "console.js", "chart.js-LICENSE.md"}
TIMEOUTS = (5, 10, 15, 20, 30, 45, 60, 120)  # minutes: the timeout sensitivity curve
LIST_LIMIT = 200


def ledger(request: Request) -> AsyncChatLedger:
    """The signed-in key's tenant's ledger (before sign-in, and without keys: the default's)."""
    led: AsyncChatLedger | None = getattr(request.state, "ledger", None)
    return led if led is not None else request.app.state.ledgers[DEFAULT_TENANT]


async def tenant_ledger(request: Request, tenant: str) -> AsyncChatLedger:
    """The tenant's handle on the store (as the service's keys: made once, then kept)."""
    ledgers: dict[str, AsyncChatLedger] = request.app.state.ledgers
    if tenant not in ledgers:
        ledgers[tenant] = await ledgers[DEFAULT_TENANT].tenant(tenant)
    return ledgers[tenant]


async def signed_in(request: Request, *scopes: str) -> Response | None:
    """None if the request's cookie is a key with one of ``scopes``; else the page to answer."""
    if not request.app.state.require_keys:
        return None
    token = request.cookies.get(COOKIE, "")
    led = request.app.state.ledgers[DEFAULT_TENANT]  # the store's keys: the operator's ledger
    key: ApiKey | None = (
        await led.run("authenticate", lambda: led.sync.api_keys.authenticate(token))
        if token
        else None
    )
    if key is None:
        return RedirectResponse("/console/login", status_code=303)
    if not set(scopes) & set(key.scopes):
        page = pages.message_page(
            "Forbidden", f"This page takes a key with scope {' or '.join(scopes)}."
        )
        return HTMLResponse(page, status_code=403)
    request.state.key = key
    request.state.ledger = await tenant_ledger(request, key.tenant)  # nobody reaches another tenant
    return None


def when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def console_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in FILES:
            return HTMLResponse(pages.message_page("Not found", name), status_code=404)
        return FileResponse(STATIC / name, headers={"cache-control": "max-age=3600"})

    @router.get("/login")
    async def login_form() -> Response:
        return HTMLResponse(pages.login_page())

    @router.post("/login")
    async def login(request: Request) -> Response:
        token = (
            parse_qs((await request.body()).decode("utf-8", "replace")).get("key", [""])[0].strip()
        )
        led = request.app.state.ledgers[DEFAULT_TENANT]  # the store's keys
        key = await led.run("authenticate", lambda: led.sync.api_keys.authenticate(token))
        if key is None:
            return HTMLResponse(
                pages.login_page("The API key is unknown or revoked."), status_code=401
            )
        target = "/console/" if {"analyst", "bot"} & set(key.scopes) else "/console/audit"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE, token, max_age=COOKIE_AGE, httponly=True, samesite="strict", path="/console"
        )
        return response

    @router.get("/")
    async def analytics(
        request: Request, start: str | None = None, end: str | None = None
    ) -> Response:
        if (refused := await signed_in(request, "analyst")) is not None:
            return refused
        led, since, until = ledger(request), when(start), when(end)
        result = await led.run("analytics", lambda: led.sync.analytics(start=since, end=until))
        curve = await led.run(
            "resessionize",
            lambda: [
                led.sync.resessionize(timedelta(minutes=m), start=since, end=until)
                for m in TIMEOUTS
            ],
        )
        return HTMLResponse(pages.analytics_page(result, curve, led.sync.policy.idle_timeout))

    @router.get("/sessions")
    async def sessions(
        request: Request,
        user_id: str | None = None,
        visitor_id: str | None = None,
        start: str | None = None,
        end: str | None = None,
    ) -> Response:
        if (refused := await signed_in(request, "analyst")) is not None:
            return refused
        led = ledger(request)
        since, until = when(start), when(end)
        if not (user_id or visitor_id or since or until):  # the last day of the ledger clock
            since = led.sync.now(None) - timedelta(days=1)
        found = await led.run(
            "transcript",
            lambda: led.sync.transcript(
                user_id=user_id or None, visitor_id=visitor_id or None, start=since, end=until
            ),
        )
        rows: dict[UUID, list[object]] = {}
        for m in found.messages:
            row = rows.setdefault(
                m.session_id,
                [
                    str(m.session_id),
                    m.visitor_id,
                    m.user_id or "",
                    m.channel,
                    f"{m.at:%Y-%m-%d %H:%M}",
                    0,
                ],
            )
            row[5] = int(str(row[5])) + 1
        listed = [tuple(r) for r in list(rows.values())[-LIST_LIMIT:]][::-1]
        query = {k: v for k, v in request.query_params.items()}
        return HTMLResponse(pages.session_list_page(listed, query))  # type: ignore[arg-type]

    @router.get("/sessions/{session_id}")
    async def session(request: Request, session_id: UUID, as_of: str | None = None) -> Response:
        if (refused := await signed_in(request, "analyst", "auditor")) is not None:
            return refused
        led = ledger(request)
        events = await led.run("session_events", lambda: led.sync.session_events(session_id))
        times = sorted({e.occurred_at for e in events if hasattr(e, "occurred_at")})
        at = when(as_of) or times[-1]
        if at not in times:
            times = sorted({*times, at})
        state = await led.run("session", lambda: led.sync.session(session_id, as_of=at))
        listed = [(f"{getattr(e, 'occurred_at', '')}", type(e).__qualname__) for e in events]
        return HTMLResponse(pages.session_page(state, times, times.index(at), listed))

    @router.get("/audit")
    async def audit(request: Request) -> Response:
        if (refused := await signed_in(request, "auditor")) is not None:
            return refused
        led = ledger(request)
        report = await led.run("verify", lambda: led.sync.verify())
        return HTMLResponse(pages.audit_page(report))

    return router


__all__ = ["COOKIE", "console_router"]
