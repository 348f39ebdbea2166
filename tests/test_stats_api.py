"""``POST /api/v2/query`` through the real service: events sent over HTTP, asked with
Plausible's documented example requests and a Bearer read key, answered as the visits
model says; bad queries are 400 problem+json naming the field, never a 5xx.

The app runs in this process (tests.inproc) with its archiver beside it on the same loop
and its data dir's embedded engine, as ``serve`` runs them: queries, shapes and problems
are the app's. The third-party client runs as a process of its own, over a socket the
app listens on in this process (uvicorn, as ``serve`` runs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from event_analytics.analytics.stats_spec import parse_query, with_goals
from event_analytics.config import Settings
from event_analytics.goals import Goal
from event_analytics.target import engine_settings
from tests import visits_model as model
from tests.helpers import event
from tests.inproc import InProcessService, in_process
from tests.readback import wait_stats_archived

READ, WRITE = "stats-read-key-000000001", "stats-write-key-00000001"
AUTH = {"Authorization": f"Bearer {READ}"}
SITE = "shop.example"
WAIT_S = 30


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """The keyed app with its archiver, on its data dir's embedded engine, started as
    ``serve`` starts it (target.engine_settings)."""
    root = tmp_path_factory.mktemp("stats")
    settings = Settings(
        data_dir=root / "data",
        archive_dir=root / "archive",
        read_keys=READ,  # type: ignore[arg-type]
        write_keys=WRITE,  # type: ignore[arg-type]
    )
    with engine_settings(settings) as resolved, in_process(resolved, {}, archiver=True) as app:
        yield app


def _ask(svc: InProcessService, body: Any) -> Any:
    return svc.http.post(f"{svc.url}/api/v2/query", json=body, headers=AUTH)


@pytest.fixture(scope="module")
def sent(svc: InProcessService) -> list[dict[str, Any]]:
    """Visits of three visitors in the last day: a bounce from Google, a two-page visit
    from Twitter, a visit split by a 31-minute gap, and another site's event. All in the
    past (no future skew) and inside "7d" whatever the time of day."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    plan = [
        ("a", -20 * 3600, "/", {"source": "Google", "country": "US"}),
        ("b", 600, "/", {"source": "Twitter", "country": "DE"}),
        (
            "b",
            630,
            "/",
            {"event_name": "Purchase", "revenue_amount": "1322.22", "revenue_currency": "USD"},
        ),
        (
            "b",
            640,
            "/",
            {"event_name": "Purchase", "revenue_amount": "5", "revenue_currency": "EUR"},
        ),  # not the goal's currency: dropped
        ("b", 660, "/pricing", {"country": "DE"}),
        ("c", 60, "/blog", {"country": "US"}),
        ("c", 60 + 31 * 60, "/pricing", {"country": "US"}),
    ]
    bodies = [
        event(user=u, ts=t0 + timedelta(seconds=t), url=f"https://{SITE}{page}", domain=SITE,
              event_type="purchase" if "event_name" in extra else "page_view", **extra)
        for u, t, page, extra in plan
    ]  # fmt: skip
    for goal in ({"goal_type": "event", "event_name": "Purchase", "currency": "USD"},
                 {"goal_type": "page", "page_path": "/pric*"}):  # fmt: skip
        r = svc.http.put(f"{svc.url}/api/v1/sites/goals", json={"site_id": SITE, **goal},
                         headers={"Authorization": f"Bearer {WRITE}"})  # fmt: skip
        assert r.status_code == 200, r.text
    bodies.append(event(user="a", ts=t0 + timedelta(seconds=5), url="https://other.example/"))
    r = svc.http.post(f"{svc.url}/events/batch", json={"events": bodies},
                      headers={"Authorization": f"Bearer {WRITE}"})  # fmt: skip
    assert r.status_code in (200, 201, 207), r.text
    wait_stats_archived(svc, SITE, AUTH, datetime.now(UTC), WAIT_S)
    return model.records_of(bodies)


EXAMPLES = [
    {"site_id": SITE, "metrics": ["visitors", "visits", "bounce_rate", "visit_duration",
     "pageviews", "views_per_visit", "events"], "date_range": "7d"},
    {"site_id": SITE, "metrics": ["visitors", "visits"], "date_range": "7d",
     "dimensions": ["time:day"], "include": {"time_labels": True}},
    {"site_id": SITE, "metrics": ["visitors", "bounce_rate", "percentage"], "date_range": "7d",
     "dimensions": ["visit:source"]},
    {"site_id": SITE, "metrics": ["visitors", "pageviews"], "date_range": "7d",
     "dimensions": ["event:page"], "filters": [["is", "visit:country", ["US", "DE"]],
     ["contains", "event:page", ["pric", "blog"]]], "include": {"total_rows": True}},
    {"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
     "dimensions": ["visit:entry_page", "visit:exit_page"],
     "filters": [["not", ["is", "visit:source", ["Google"]]]]},
    {"site_id": SITE, "metrics": ["visitors", "visits"], "date_range": "7d",
     "dimensions": ["visit:country"], "filters": [["has_done", ["contains", "event:page",
     ["PRICING"], {"case_sensitive": False}]]]},
    {"site_id": SITE, "metrics": ["visitors", "events", "conversion_rate", "total_revenue",
     "average_revenue"], "date_range": "7d", "dimensions": ["event:goal"]},
    {"site_id": SITE, "metrics": ["visitors", "conversion_rate", "group_conversion_rate"],
     "date_range": "7d", "dimensions": ["visit:source"],
     "filters": [["is", "event:goal", ["Visit /pric*"]]]},
]  # fmt: skip


def _goals(svc: InProcessService) -> list[Goal]:
    r = svc.http.get(f"{svc.url}/api/v1/sites/goals", params={"site_id": SITE}, headers=AUTH)
    assert r.status_code == 200, r.text
    return sorted((Goal.from_dict({**g, "site": SITE, "kind": g["goal_type"]})
                   for g in r.json()["goals"]), key=lambda g: g.id)  # fmt: skip


@pytest.mark.parametrize("body", EXAMPLES)
def test_documented_examples_answer_as_the_model(
    svc: InProcessService, sent: list[dict[str, Any]], body: dict[str, Any]
) -> None:
    r = _ask(svc, body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"results", "meta", "query"}
    assert got["meta"]["method"] == "exact"
    start, end = (datetime.fromisoformat(t) for t in got["query"]["date_range"])
    q = parse_query(body, datetime.now(UTC))
    if "event:goal" in str(body):
        q = with_goals(q, _goals(svc))
    unit = "day" if "time:day" in q.dimensions else None
    want, total, dropped = model.query(sent, q, start, end, 1800, unit)
    if "total_revenue" in q.metrics:
        assert got["meta"]["revenue_dropped_events"] == dropped == 1
    for row in want:
        row["dimensions"] = [
            v.strftime("%Y-%m-%d") if isinstance(v, datetime) else v for v in row["dimensions"]
        ]
    assert got["results"] == want
    assert want and any(r["metrics"][0] for r in want), "the example must count something"
    if q.include.total_rows:
        assert got["meta"]["total_rows"] == total
    if q.include.time_labels:
        assert len(got["meta"]["time_labels"]) == 7


def test_aggregate_numbers(svc: InProcessService, sent: list[dict[str, Any]]) -> None:
    """By hand: 4 visits (c's split in two), 3 of them bounces."""
    body = {"site_id": SITE, "metrics": ["visitors", "visits", "pageviews", "bounce_rate",
            "visit_duration", "views_per_visit"], "date_range": "7d"}  # fmt: skip
    got = _ask(svc, body).json()["results"]
    assert got == [{"metrics": [3, 4, 5, 75, 15, 1.25], "dimensions": []}]


def test_comparison_previous_period(svc: InProcessService, sent: list[dict[str, Any]]) -> None:
    """Nothing the week before: every count 100 % up, the bounce rate's change none."""
    body = {"site_id": SITE, "metrics": ["visitors", "bounce_rate"], "date_range": "7d",
            "include": {"comparisons": {"mode": "previous_period"}}}  # fmt: skip
    got = _ask(svc, body).json()
    assert got["results"] == [{"metrics": [3, 75], "dimensions": [], "comparison": {
        "dimensions": [], "metrics": [0, 0], "change": [100, None]}}]  # fmt: skip
    start, end = (datetime.fromisoformat(t) for t in got["query"]["date_range"])
    assert [datetime.fromisoformat(t) for t in got["query"]["comparison_date_range"]] == [
        start - (end - start), start]  # fmt: skip


def test_goal_numbers(svc: InProcessService, sent: list[dict[str, Any]]) -> None:
    """By hand: b bought (one USD purchase of 1322.22 summed, the EUR one dropped); b and
    c saw /pricing, of 3 visitors."""
    body = {"site_id": SITE, "metrics": ["visitors", "conversion_rate", "total_revenue"],
            "date_range": "7d", "dimensions": ["event:goal"]}  # fmt: skip
    got = _ask(svc, body).json()
    usd = {"short": "$1.3K", "long": "$1,322.22", "value": 1322.22, "currency": "USD"}
    assert got["results"] == [
        {"metrics": [2, 66.67, None], "dimensions": ["Visit /pric*"]},
        {"metrics": [1, 33.33, usd], "dimensions": ["Purchase"]},
    ]
    assert got["meta"]["revenue_dropped_events"] == 1


BAD = [
    ({"metrics": ["visitors"], "date_range": "7d"}, "site_id"),
    ({"site_id": SITE, "metrics": ["visitors", "nope"], "date_range": "7d"}, "metrics[1]"),
    ({"site_id": SITE, "metrics": ["conversion_rate"], "date_range": "7d"}, "metrics[0]"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "8d"}, "date_range"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": ["2024-02-30", "2024-03-01"]},
     "date_range"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d", "dimensions": ["visit:city"]},
     "dimensions[0]"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
      "filters": [["and", [["matches", "event:page", ["(unclosed"]]]]]}, "filters[0][1][0][2][0]"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
      "filters": [["is", "event:goal", ["Signup"]]]}, "filters[0]"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
      "filters": [["has_done", ["is", "visit:source", ["x"]]]]}, "filters[0][1]"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
      "filters": [["is", "event:page", ["/"], {"case_sensitive": "no"}]]},
     "filters[0][3].case_sensitive"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d", "order_by": [["bounce_rate",
      "desc"]]}, "order_by[0]"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
      "pagination": {"limit": 0}}, "pagination.limit"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
      "include": {"comparisons": {"mode": "last_week"}}}, "include.comparisons.mode"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d",
      "include": {"comparisons": {"mode": "custom", "date_range": ["2024-01-02", "2024-01-01"]}}},
     "include.comparisons.date_range"),
    ({"site_id": SITE, "metrics": ["views_per_visit"], "date_range": "7d",
      "dimensions": ["event:page"]}, "metrics"),
    ({"site_id": SITE, "metrics": ["visits"], "date_range": "7d", "limit": 3}, "limit"),
    (["not", "an", "object"], ""),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), BAD)
def test_bad_queries_are_400_naming_the_field(svc: InProcessService, body: Any, field: str) -> None:
    r = _ask(svc, body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["errors"][0]["field"] == field
    assert "SELECT" not in r.text and "{" not in problem["detail"]


def test_key_and_body_checks(svc: InProcessService) -> None:
    body = {"site_id": SITE, "metrics": ["visits"], "date_range": "7d"}
    assert svc.http.post(f"{svc.url}/api/v2/query", json=body).status_code == 401
    r = svc.http.post(f"{svc.url}/api/v2/query", content=b"{nope", headers=AUTH)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    big = {**body, "filters": [["is", "event:page", ["x" * 70_000]]]}
    assert _ask(svc, big).status_code == 413


# -- Stats API v1: the same numbers as the v2 model, in v1's shapes ------------------------


# "Today" fixed once for the v1 checks and their model, so that midnight passing between a
# request and its model cannot move the range (every sent event is before it).
TODAY = datetime.now(UTC).date()
FIRST = TODAY - timedelta(days=6)


def _v1(svc: InProcessService, path: str, **params: Any) -> Any:
    if path != "realtime/visitors" and params.get("period") != "custom":
        params = {"date": TODAY.isoformat(), **params}
    return svc.http.get(f"{svc.url}/api/v1/stats/{path}", params=params, headers=AUTH)


def _model(sent: list[dict[str, Any]], body: dict[str, Any], unit: str | None = None) -> Any:
    now = datetime.now(UTC)
    q = parse_query({"site_id": SITE, "date_range": "7d", "date": TODAY.isoformat(), **body}, now)
    if "event:goal" in str(body):
        q = with_goals(q, GOALS_SEEN)
    start = q.start
    assert start is not None
    if q.include.comparisons:
        return model.compared(sent, q, (start, q.end), (start - (q.end - start), start), 1800,
                              unit)  # fmt: skip
    return model.query(sent, q, start, q.end, 1800, unit)[0]


GOALS_SEEN: list[Goal] = []


def test_v1_aggregate_with_compare(svc: InProcessService, sent: list[dict[str, Any]]) -> None:
    metrics = ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration"]
    r = _v1(svc, "aggregate", site_id=SITE, period="7d", metrics=",".join(metrics),
            compare="previous_period")  # fmt: skip
    assert r.status_code == 200, r.text
    (row,) = _model(sent, {"metrics": metrics,
                           "include": {"comparisons": {"mode": "previous_period"}}})  # fmt: skip
    assert r.json() == {"results": {
        m: {"value": row["metrics"][i], "comparison_value": row["comparison"]["metrics"][i],
            "change": row["comparison"]["change"][i]} for i, m in enumerate(metrics)}}  # fmt: skip
    assert r.json()["results"]["visitors"] == {"value": 3, "comparison_value": 0, "change": 100}


def test_v1_timeseries(svc: InProcessService, sent: list[dict[str, Any]]) -> None:
    r = _v1(svc, "timeseries", site_id=SITE, period="7d", metrics="visitors,pageviews")
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    want = _model(sent, {"metrics": ["visitors", "pageviews"], "dimensions": ["time:day"]}, "day")
    by_day = {row["dimensions"][0].strftime("%Y-%m-%d"): row["metrics"] for row in want}
    days = [(TODAY - timedelta(days=6 - i)).isoformat() for i in range(7)]
    assert got == [{"date": d, "visitors": by_day.get(d, [0, 0])[0],
                    "pageviews": by_day.get(d, [0, 0])[1]} for d in days]  # fmt: skip
    assert sum(row["pageviews"] for row in got) == 5


@pytest.mark.parametrize(
    ("params", "body"),
    [({"property": "visit:country", "filters": "visit:source!=Google"},
      {"dimensions": ["visit:country"], "filters": [["is_not", "visit:source", ["Google"]]]}),
     ({"property": "event:page", "filters": "visit:country==US|DE;event:page~pric",
       "metrics": "visitors,pageviews"},
      {"dimensions": ["event:page"], "metrics": ["visitors", "pageviews"], "filters": [
          ["is", "visit:country", ["US", "DE"]], ["contains", "event:page", ["pric"]]]}),
     ({"property": "visit:source", "filters": "event:page==/pric*", "limit": "1", "page": "2"},
      {"dimensions": ["visit:source"], "filters": [["matches", "event:page", ["^/pric[^/]*$"]]],
       "pagination": {"limit": 1, "offset": 1}}),
     ({"property": "event:goal", "metrics": "visitors,conversion_rate"},
      {"dimensions": ["event:goal"], "metrics": ["visitors", "conversion_rate"]})],
)  # fmt: skip
def test_v1_breakdown(
    svc: InProcessService, sent: list[dict[str, Any]], params: dict[str, str], body: dict[str, Any]
) -> None:
    GOALS_SEEN[:] = _goals(svc)
    r = _v1(svc, "breakdown", site_id=SITE, period="7d", **params)
    assert r.status_code == 200, r.text
    metrics = params.get("metrics", "visitors").split(",")
    key = params["property"].split(":")[-1]
    want = _model(sent, {"metrics": metrics, **body})
    assert want, "the example must count something"
    rows = [{key: row["dimensions"][0], **dict(zip(metrics, row["metrics"], strict=True))}
            for row in want]  # fmt: skip
    assert r.json() == {"results": rows}


def test_v1_realtime(svc: InProcessService) -> None:
    """Visitors with an event in the last five minutes, once it is archived (bounded)."""
    site = "live.example"
    assert _v1(svc, "realtime/visitors", site_id=site).json() == 0
    bodies = [event(user=u, url=f"https://{site}/", domain=site) for u in ("x", "y", "x")]
    r = svc.http.post(f"{svc.url}/events/batch", json={"events": bodies},
                      headers={"Authorization": f"Bearer {WRITE}"})  # fmt: skip
    assert r.status_code in (200, 201, 207), r.text
    sent_at = datetime.now(UTC)
    deadline = time.monotonic() + WAIT_S
    while True:  # until the archive holds them (bounded), as archived_until says
        meta = _ask(svc, {"site_id": site, "metrics": ["visits"], "date_range": "day"}).json()
        if datetime.fromisoformat(meta["meta"]["archived_until"]) > sent_at:
            break
        assert time.monotonic() < deadline, meta
        time.sleep(0.3)
    assert _v1(svc, "realtime/visitors", site_id=site).json() == 2


V1_BAD = [
    ("aggregate", {"period": "7d"}, "site_id"),
    ("aggregate", {"site_id": SITE, "period": "8d"}, "period"),
    ("aggregate", {"site_id": SITE, "period": "custom"}, "date"),
    ("aggregate", {"site_id": SITE, "period": "custom", "date": "2024-01-05,2024-01-01"}, "period"),
    ("aggregate", {"site_id": SITE, "metrics": "visitors,nope"}, "metrics"),
    ("aggregate", {"site_id": SITE, "compare": "year"}, "compare"),
    ("aggregate", {"site_id": SITE, "filters": "visit:browser"}, "filters"),
    ("aggregate", {"site_id": SITE, "filters": "visit:city==Paris"}, "filters"),
    ("aggregate", {"site_id": SITE, "filters": "event:goal==Nope"}, "filters"),
    ("aggregate", {"site_id": SITE, "property": "visit:source"}, "property"),
    ("timeseries", {"site_id": SITE, "interval": "week"}, "interval"),
    ("breakdown", {"site_id": SITE}, "property"),
    ("breakdown", {"site_id": SITE, "property": "visit:city"}, "property"),
    ("breakdown", {"site_id": SITE, "property": "visit:source", "limit": "0"}, "limit"),
    ("breakdown", {"site_id": SITE, "property": "visit:source", "page": "x"}, "page"),
    ("breakdown", {"site_id": SITE, "property": "visit:source", "page": "1000000"}, "page"),
    ("aggregate", {"site_id": SITE, "metrics": "conversion_rate"}, "metrics"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "params", "field"), V1_BAD)
def test_v1_bad_parameters_are_400_naming_them(
    svc: InProcessService, path: str, params: dict[str, str], field: str
) -> None:
    r = _v1(svc, path, **params)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == field
    assert "{" not in r.json()["detail"]


def test_third_party_v1_client(svc: InProcessService, sent: list[dict[str, Any]]) -> None:
    """The ``plausible-mcp`` package (PyPI), pointed at the service by its base URL,
    reads the model's numbers through v1 (it parses our answers: an error would be text)."""
    env = {**os.environ, "PLAUSIBLE_BASE_URL": svc.listen(), "PLAUSIBLE_API_KEY": READ,
           "DO_NOT_TRACK": "1"}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "tests.stats_client_mcp", SITE, FIRST.isoformat(),
         TODAY.isoformat()], env=env, capture_output=True,
        text=True, timeout=120, check=False, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    metrics = ["visitors", "visits", "pageviews", "bounce_rate"]
    (total,) = _model(sent, {"metrics": metrics})  # the same 7 days as the client's custom range
    assert got["aggregate"]["totals"] == dict(zip(metrics, total["metrics"], strict=True))
    sources = _model(sent, {"metrics": ["visitors"], "dimensions": ["visit:source"]})
    assert got["breakdown"]["results"] == [
        {"source": r["dimensions"][0], "visitors": r["metrics"][0]} for r in sources
    ]
    days = _model(sent, {"metrics": ["visitors"], "dimensions": ["time:day"]}, "day")
    by_day = {r["dimensions"][0].strftime("%Y-%m-%d"): r["metrics"][0] for r in days}
    series = got["timeseries"]["timeseries"]
    assert len(series) == 7
    assert all(point["visitors"] == by_day.get(point["date"], 0) for point in series)
    assert got["realtime"]["realtime_visitors"] == 0  # every event is hours old
