"""GET /dashboard: the live page, and its static files under /dashboard/static."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from event_analytics import dashboard

router = APIRouter(tags=["dashboard"])

STATIC_PATH = "/dashboard/static"


@router.get(
    "/dashboard",
    summary="Live dashboard (HTML): page views, unique users, top pages, archive lag",
    description=(
        "A page for people, refreshed every 5 seconds from the JSON endpoints "
        "(`/analytics/timeseries`, `/analytics/top-pages`, `/analytics/realtime`, "
        "`/persistent/status`, `/metrics`). Works offline: its chart library is served "
        f"from `{STATIC_PATH}`. `?event_type=` shows another event type."
    ),
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The page"}},
)
async def page() -> HTMLResponse:
    # no-cache: the page is tiny, and a stale copy after an upgrade would load old scripts.
    return HTMLResponse(dashboard.page(), headers={"Cache-Control": "no-cache"})


@router.get(
    "/dashboard/explore",
    summary="Explore (HTML): a funnel builder and a retention heat map over the archive",
    description=(
        "Runs `POST /analytics/funnel` and `/analytics/retention` from the browser; "
        "`?range=1h|24h|7d|30d&steps=a,b&window=S&cohort=T&return=T&period=P`."
    ),
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The page"}},
)
async def explore() -> HTMLResponse:
    return HTMLResponse(dashboard.page("explore.html"), headers={"Cache-Control": "no-cache"})


@dataclass(frozen=True, slots=True)
class _Route:
    """What the request-timing middleware reads to label the route."""

    path: str


class LabelledStatic:
    """StaticFiles whose requests are timed under one route label.

    A mount sets no route in the scope, so they would count as ``unmatched``, mixed
    with requests for paths that do not exist.
    """

    route = _Route(STATIC_PATH + "/{path}")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    """Add the page's route and mount its static files."""
    app.include_router(router)
    files = StaticFiles(directory=dashboard.STATIC_DIR)
    app.mount(STATIC_PATH, LabelledStatic(files), name="dashboard-static")
