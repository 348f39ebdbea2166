"""The pages: /dashboard (the live monitor), /dashboard/<site> (a site's page),
/dashboard/explore, and their static files under /dashboard/static."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
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
        f"from `{STATIC_PATH}`. `?event_type=` shows another event type. `?site=<domain>` "
        "redirects to that site's page, `/dashboard/<domain>`."
    ),
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {}}, "description": "The page"},
        307: {"description": "`?site=`: to the site's page"},
    },
)
async def page(request: Request) -> Response:
    site = request.query_params.get("site")
    if site:
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "site"]
        query = f"?{urlencode(rest)}" if rest else ""
        # Relative: right behind a proxy that mounts the service under a prefix.
        return RedirectResponse(f"dashboard/{quote(site, safe='')}{query}", status_code=307)
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


@router.get(
    "/dashboard/{site}",
    summary="A site's page (HTML): visitors, visits, bounce rate, duration, panels, filters",
    description=(
        "Reads `POST /api/v2/query` and `GET /api/sites` from the browser (with the read key "
        "given as `#key=`). `/dashboard/sites` picks the site with the most events. The view "
        "is in the query string: `range=today|yesterday|7d|30d|month|lastmonth|custom` "
        "(`from`, `to`), `compare=previous|year|off`, `metric=`, `interval=`, and one "
        "`f=is|<dimension>|<value>` (or `is_not`) per filter."
    ),
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The page"}},
)
async def site_page(site: str) -> HTMLResponse:
    # The page is the same for every site: its script reads the site from the path.
    del site
    return HTMLResponse(dashboard.page("site.html"), headers={"Cache-Control": "no-cache"})


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
