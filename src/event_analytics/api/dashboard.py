"""GET /dashboard: the live page, and its static files under /dashboard/static."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

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


def install(app: FastAPI) -> None:
    """Add the page's route and mount its static files."""
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=dashboard.STATIC_DIR), name="dashboard-static")
