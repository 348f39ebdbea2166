"""The analytics endpoints through the real service: events sent over HTTP appear in
funnel, retention and query answers once ``archived_until`` passes their receive time;
bad input is a 422 naming the field (in-process: ``tests.inproc``); busy and slow queries
are 503 and 504."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from event_analytics.analytics.pool import QueryBusy, QueryEngine, QueryTimeout
from event_analytics.api.problems import render_error
from event_analytics.archive import files
from tests import analytics_model as model
from tests.backends import Backend
from tests.helpers import HTTP, event
from tests.inproc import InProcessService
from tests.servers import ArchiverProcess, ServiceProcess, archiving_service

WAIT_S = 30


def _suffix() -> str:
    return uuid.uuid4().hex[:8].translate(str.maketrans("0123456789", "ghijklmnop"))


def _post(url: str, path: str, body: dict[str, Any], http: httpx.Client = HTTP) -> Any:
    r = http.post(f"{url}{path}", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _until(answer: dict[str, Any]) -> datetime:
    text = answer.get("archived_until") or answer["meta"]["archived_until"]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _archived(url: str, path: str, body: dict[str, Any], after: datetime) -> dict[str, Any]:
    """Ask until the answer's archived_until passes ``after`` (bounded wait)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        answer = _post(url, path, body)
        if _until(answer) > after:
            return answer
        assert time.monotonic() < deadline, f"archived_until stayed at {_until(answer)}"
        time.sleep(0.3)


def _sent(bodies: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """Send each event; the records the archive will hold (received_at not known here)."""
    r = HTTP.post(f"{url}/events/batch", json={"events": bodies})
    assert r.status_code in (200, 201, 207), r.text
    out = []
    for b in bodies:
        ts = datetime.fromisoformat(b["timestamp"]).astimezone(UTC)
        out.append({**b, "timestamp": ts.isoformat(), "received_at": ts.isoformat()})
    return out


def test_events_over_http_appear_once_archived(live: ServiceProcess) -> None:
    s = _suffix()
    view, signup, buy = f"view_{s}", f"signup_{s}", f"buy_{s}"
    now = datetime.now(UTC).replace(microsecond=0)
    base = now - timedelta(minutes=30)
    bodies = []
    for u in range(12):
        user = f"{s}-u{u}"
        t = base + timedelta(seconds=u)
        bodies.append(event(user=user, ts=t, event_type=view, url="https://shop.example/pricing"))
        if u % 2 == 0:
            bodies.append(event(user=user, ts=t + timedelta(seconds=30 + u), event_type=signup,
                                url=None, plan="pro" if u % 4 == 0 else "free"))  # fmt: skip
        if u % 4 == 0:
            bodies.append(event(user=user, ts=t + timedelta(minutes=2), event_type=buy, url=None,
                                plan="pro"))  # fmt: skip
    # Unordered steps and ties need records in the archive's order: timestamps differ here.
    records = _sent(bodies, live.url)
    sent_at = datetime.now(UTC)
    frm, to = (base - timedelta(minutes=1)).isoformat(), (now + timedelta(minutes=1)).isoformat()
    spec = {
        "from": frm, "to": to, "window_s": 3600, "order": "ordered",
        "steps": [{"event_type": view, "page_url": "https://shop.example/*"},
                  {"event_type": signup},
                  {"event_type": buy, "where": [["is", "plan", ["pro", "team"]]]}],
    }  # fmt: skip
    answer = _archived(live.url, "/analytics/funnel", spec, sent_at)
    want = model.funnel(records, spec)
    assert [s["users"] for s in answer["steps"]] == [st["users"] for st in want["steps"]]
    assert [s["users"] for s in answer["steps"]] == [12, 6, 3]
    assert answer["method"] == "exact"
    assert (
        answer["steps"][1]["median_s_from_previous"] == want["steps"][1]["median_s_from_previous"]
    )
    assert _until(answer) <= datetime.now(UTC)

    q = {"date_range": [frm, to], "metrics": ["events", "visitors"],
         "dimensions": ["event_type"], "filters": [["contains", "event_type", [s]]]}  # fmt: skip
    got = _post(live.url, "/analytics/query", q)
    start, end = (datetime.fromisoformat(x) for x in (frm, to))
    assert got["results"] == model.query(records, q, start, end)["results"]
    assert got["meta"]["total_rows"] == 3

    r = {"from": (base - timedelta(days=1)).isoformat(), "to": to, "period": "day",
         "periods": 1, "cohort_event": {"event_type": signup},
         "return_event": {"event_type": buy}, "type": "first_time"}  # fmt: skip
    got = _post(live.url, "/analytics/retention", r)
    want_r = model.retention(records, r, _until(got))
    assert [c["values"] for c in got["cohorts"]] == [c["values"] for c in want_r["cohorts"]]
    assert sum(c["users"] for c in got["cohorts"]) == 6


GOOD_FUNNEL = {
    "from": "2026-11-28T00:00:00Z",
    "to": "2026-11-29T00:00:00Z",
    "steps": [{"event_type": "page_view"}, {"event_type": "signup"}],
}
GOOD_QUERY = {"date_range": "24h", "metrics": ["events"]}
GOOD_RETENTION = {
    "from": "2026-11-24T00:00:00Z", "to": "2026-12-01T00:00:00Z", "period": "day",
    "periods": 7, "cohort_event": {"event_type": "signup"},
    "return_event": {"event_type": "page_view"},
}  # fmt: skip
BAD = [
    ("/analytics/funnel", {**GOOD_FUNNEL, "order": "sideways"}, "order"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "steps": [{"event_type": "a"}] * 21}, "steps"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "steps": [{"event_type": "a"}]}, "steps"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "window_s": 0}, "window_s"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "window_s": 90 * 86400 + 1}, "window_s"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "to": "2028-01-01T00:00:00Z"}, "body"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "to": "2026-11-27T00:00:00Z"}, "body"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "from": "yesterday"}, "from"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "from": "0001-01-01T00:00:00+05:30"}, "body"),
    ("/analytics/funnel", {**GOOD_FUNNEL, "breakdown": "user_id"}, "breakdown"),
    (
        "/analytics/funnel",
        {
            **GOOD_FUNNEL,
            "steps": [
                {"event_type": "a", "where": [["matches", "plan", ["(unclosed"]]]},
                {"event_type": "b"},
            ],
        },
        "steps.0.where",
    ),
    (
        "/analytics/funnel",
        {
            **GOOD_FUNNEL,
            "steps": [{"event_type": "a", "where": [["eq", "plan", ["x"]]]}, {"event_type": "b"}],
        },
        "steps.0.where",
    ),
    (
        "/analytics/funnel",
        {**GOOD_FUNNEL, "steps": [{"event_type": "Bad Type"}, {"event_type": "b"}]},
        "steps.0.event_type",
    ),
    ("/analytics/retention", {**GOOD_RETENTION, "periods": 61}, "periods"),
    (  # found by the fuzz test: a non-string page_url was a 500
        "/analytics/retention",
        {**GOOD_RETENTION, "cohort_event": {"event_type": "a", "page_url": 79504}},
        "cohort_event.page_url",
    ),
    ("/analytics/retention", {**GOOD_RETENTION, "period": "fortnight"}, "period"),
    ("/analytics/retention", {**GOOD_RETENTION, "type": "sometimes"}, "type"),
    (
        "/analytics/retention",
        {**GOOD_RETENTION, "period": "hour", "to": "2027-01-01T00:00:00Z"},
        "body",
    ),
    ("/analytics/query", {**GOOD_QUERY, "metrics": ["bounce_rate"]}, "metrics.0"),
    ("/analytics/query", {**GOOD_QUERY, "metrics": []}, "metrics"),
    ("/analytics/query", {**GOOD_QUERY, "dimensions": ["browser"]}, "dimensions"),
    ("/analytics/query", {**GOOD_QUERY, "dimensions": ["user_id"]}, "dimensions"),
    ("/analytics/query", {**GOOD_QUERY, "dimensions": ["time:decade"]}, "dimensions"),
    ("/analytics/query", {**GOOD_QUERY, "pagination": {"limit": 10_001}}, "pagination.limit"),
    ("/analytics/query", {**GOOD_QUERY, "date_range": "2y"}, "date_range"),
    (
        "/analytics/query",
        {**GOOD_QUERY, "date_range": ["2020-01-01T00:00:00Z", "2026-01-01T00:00:00Z"]},
        "date_range",
    ),
    (
        "/analytics/query",
        {**GOOD_QUERY, "filters": [["matches", "page_url", ["[z-a]"]]]},
        "filters",
    ),
    (
        "/analytics/query",
        {**GOOD_QUERY, "filters": [["is", "page_url; DROP", ["x"]]]},
        "filters",
    ),
    ("/analytics/query", {**GOOD_QUERY, "filters": [["or", []]]}, "filters"),
    ("/analytics/query", {**GOOD_QUERY, "order_by": [["visitors", "desc"]]}, "body"),
    ("/analytics/query", {**GOOD_QUERY, "order_by": [["events", "up"]]}, "order_by.0.1"),
    ("/analytics/query", {**GOOD_QUERY, "sql": "SELECT 1"}, "sql"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD)
def test_bad_input_is_a_422_naming_the_field(
    app_service: InProcessService, path: str, body: dict[str, Any], field: str
) -> None:
    r = app_service.http.post(f"{app_service.url}{path}", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    fields = [e["field"] for e in problem["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert all(e["message"] for e in problem["errors"])


def test_a_value_is_never_sql(app_service: InProcessService) -> None:
    """Quotes and SQL in values and property names are data: a valid answer, no error."""
    evil = "x') OR 1=1; DROP TABLE events; --"
    filters = [["is", "page_url", [evil]], ["contains", "property:a.b-c", [evil]]]
    q = {"date_range": "1h", "metrics": ["events"], "dimensions": ["property:plan"],
         "filters": filters}  # fmt: skip
    got = _post(app_service.url, "/analytics/query", q, app_service.http)
    assert got["results"] == []
    assert got["meta"]["total_rows"] == 0


def test_over_the_limit_is_503_with_retry_after_and_past_the_time_is_504() -> None:
    engine = QueryEngine(max_concurrent=1, timeout_s=0.3)
    release = threading.Event()

    def blocked(_: QueryEngine) -> int:
        assert release.wait(10)
        return 1

    def slow(e: QueryEngine) -> Any:
        return e.fetch("SELECT count(*) FROM range(100000000000) a")

    import asyncio

    async def scenario() -> None:
        first = asyncio.ensure_future(engine.run(blocked))
        await asyncio.sleep(0.05)
        with pytest.raises(QueryBusy) as busy:
            await engine.run(blocked)
        release.set()
        assert await first == 1
        response = render_error(busy.value)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        with pytest.raises(QueryTimeout) as late:
            await engine.run(slow)
        assert render_error(late.value).status_code == 504
        # The slot is free again after a timeout.
        assert await engine.run(lambda e: e.fetch("SELECT 42")) == [(42,)]

    asyncio.run(scenario())
    engine.close()
    assert duckdb.__version__


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["after_write", "mid_line"])
def test_a_crash_restarted_archiver_leaves_answers_exact(
    killable: Backend, tmp_path: Path, crash_at: str
) -> None:
    """Killed mid-batch (a torn last line, or lines written but not acknowledged), the
    archive answers from its whole lines only, never a 5xx; after a restart the answers
    equal the model of what was sent, each event once."""
    with archiving_service(
        killable, tmp_path, {"EA_ARCHIVER_LEASE_S": "2"}, args=["--no-archiver"]
    ) as (svc, env, root):
        now = datetime.now(UTC).replace(microsecond=0)
        bodies = [
            event(user=f"u{i % 23}", ts=now - timedelta(minutes=5, seconds=i % 200),
                  event_type=("view", "join", "buy")[i % 3], url=None)
            for i in range(300)
        ]  # fmt: skip
        records = _sent(bodies, svc.url)
        sent_at = datetime.now(UTC)
        crasher = ArchiverProcess(env | {"EA_ARCHIVER_CRASH_AT": crash_at}, tmp_path / "a1.log")
        assert crasher.proc.wait(timeout=60) == -signal.SIGKILL
        crasher.stop()
        frm, to = (now - timedelta(hours=1)).isoformat(), (now + timedelta(minutes=1)).isoformat()
        q = {"date_range": [frm, to], "metrics": ["events", "visitors"]}
        torn = _post(svc.url, "/analytics/query", q)
        whole = sum(1 for _ in files.read_lines(f.path for f in files.list_files(root)))
        assert torn["results"][0]["metrics"][0] == whole
        if crash_at == "mid_line":  # a torn tail is there, and was not counted
            assert any(f.path.read_bytes()[-1:] != b"\n" for f in files.list_files(root))
            assert whole < len(bodies)
        assert _until(torn) < sent_at  # the stream still holds them: no promise yet
        funnel_body = {"from": frm, "to": to, "window_s": 3600,
                       "steps": [{"event_type": "view"}, {"event_type": "join"},
                                 {"event_type": "buy"}]}  # fmt: skip
        with ArchiverProcess(env, tmp_path / "a2.log"):
            answer = _archived(svc.url, "/analytics/funnel", funnel_body, sent_at)
        want = model.funnel(records, funnel_body)
        assert [s["users"] for s in answer["steps"]] == [s["users"] for s in want["steps"]]
        got = _post(svc.url, "/analytics/query", q)
        assert got["results"][0]["metrics"] == [300, 23]
