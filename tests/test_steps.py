"""The steps every request takes (api/steps.py) are the same whichever stack answers it:
an unexpected error in a fast ingest route and in a FastAPI route is one problem+json 500
with the request id, logged once with its traceback. In-process (the session's app).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from starlette.types import Receive, Scope

from event_analytics.api import app as app_module
from event_analytics.api.ingest_http import IngestRoute, Reply
from tests.inproc import InProcessService

INGEST_PATH = "/test/broken-ingest"
READ_PATH = "/test/broken-read"


async def _ingest_bug(scope: Scope, receive: Receive) -> Reply:
    raise RuntimeError("a bug in an ingest handler")


async def _read_bug() -> None:
    raise RuntimeError("a bug in a FastAPI route")


@pytest.fixture
def broken(api: InProcessService, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessService]:
    """The session's app with one fast ingest route and one FastAPI route that raise
    (for this test only: both are gone afterwards)."""
    monkeypatch.setitem(app_module.HOT_ROUTES, INGEST_PATH, IngestRoute(INGEST_PATH, _ingest_bug))
    api.app.add_api_route(READ_PATH, _read_bug, include_in_schema=False)
    added = api.app.router.routes[-1]
    try:
        yield api
    finally:
        api.app.router.routes.remove(added)


@pytest.mark.parametrize(("method", "path"), [("POST", INGEST_PATH), ("GET", READ_PATH)])
def test_an_unexpected_error_is_one_500_on_both_stacks(
    broken: InProcessService, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        r = broken.http.request(method, path, headers={"x-request-id": "bug-1"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == "urn:event-analytics:problem:internal-error"
    assert "retry is safe" in problem["detail"]
    assert r.headers.get_list("x-request-id") == ["bug-1"]
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [rec.getMessage() for rec in errors]
    assert errors[0].exc_info is not None and "a bug" in str(errors[0].exc_info[1])
