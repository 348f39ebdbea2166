"""Goals in the Stats API planner on a hand-made archive: conversion rates with
Plausible's denominators, revenue per goal currency with the dropped figure, page
patterns with ``*`` and ``**``, and the 400s; money as Plausible writes it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from event_analytics.analytics import stats
from event_analytics.analytics.stats_goals import money
from event_analytics.analytics.stats_spec import StatsQueryError, parse_query, with_goals
from event_analytics.goals import Goal, Kind
from tests import visits_model as model
from tests.test_analytics_model import ENGINE, iso, write

BASE = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SITE = "a.example"
GOALS = [
    Goal(1, SITE, Kind.EVENT, "Signup", None, None, "Signup"),
    Goal(2, SITE, Kind.EVENT, "Purchase", None, "USD", "Purchase"),
    Goal(3, SITE, Kind.PAGE, None, "/blog/*", None, "Visit /blog/*"),
    Goal(4, SITE, Kind.PAGE, None, "/docs/**", None, "Visit /docs/**"),
]


def rec(user: str, t: int, kind: str = "page_view", page: str = "/", **payload: Any) -> Any:
    ts = iso(BASE + timedelta(seconds=t))
    return {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": ts,
            "event_type": kind, "received_at": ts,
            "payload": {"page_url": f"https://{SITE}{page}", **payload}}  # fmt: skip


RECS = [
    rec("u1", 0, page="/blog/a", country="US"),
    rec("u1", 60, "custom", event_name="Purchase", revenue_amount="1322.22",
        revenue_currency="USD"),
    rec("u1", 90, "custom", event_name="Purchase", revenue_amount="5", revenue_currency="EUR"),
    rec("u2", 0, page="/blog/a/b", country="US", plan="pro"),  # * stops at "/"
    rec("u2", 30, "custom", event_name="Signup"),
    rec("u3", 0, page="/docs/a/b", country="DE"),  # ** crosses "/"
    rec("u3", 10, "custom", event_name="Purchase", revenue_amount="0.5",
        revenue_currency="usd"),
    rec("u4", 0, page="/", country="DE", plan="free"),
]  # fmt: skip


def ask(tmp_path: Path, **body: Any) -> dict[str, Any]:
    body = {"site_id": SITE, "date_range": [iso(BASE), iso(BASE + timedelta(hours=1))], **body}
    q = with_goals(parse_query(body, BASE), GOALS)
    got = stats.run(ENGINE, q, write(tmp_path, RECS), BASE, 1800)
    want, _, dropped = model.query(RECS, q, BASE, BASE + timedelta(hours=1), 1800, None)
    assert got["results"] == want
    if "revenue_dropped_events" in got["meta"]:
        assert got["meta"]["revenue_dropped_events"] == dropped
    return got


def test_goal_breakdown(tmp_path: Path) -> None:
    got = ask(tmp_path, metrics=["visitors", "events", "conversion_rate", "total_revenue"],
              dimensions=["event:goal"])  # fmt: skip
    usd = money(Decimal("1322.72"), "USD")
    assert got["results"] == [
        {"dimensions": ["Purchase"], "metrics": [2, 3, 50.0, usd]},
        {"dimensions": ["Signup"], "metrics": [1, 1, 25.0, None]},
        {"dimensions": ["Visit /blog/*"], "metrics": [1, 1, 25.0, None]},
        {"dimensions": ["Visit /docs/**"], "metrics": [1, 1, 25.0, None]},
    ]
    assert got["meta"]["revenue_dropped_events"] == 1  # the EUR purchase of a USD goal


def test_goal_filter_conversion_denominators_drop_goal_and_props_filters(tmp_path: Path) -> None:
    got = ask(tmp_path, metrics=["visitors", "conversion_rate", "group_conversion_rate"],
              dimensions=["visit:country"],
              filters=[["is", "event:goal", ["Signup", "Purchase"]],
                       ["is_not", "event:props:plan", ["free"]]])  # fmt: skip
    # US: u1 bought, u2 signed up, of the US visitors u1, u2; DE: u3 of u3, u4 (whom
    # the property filter drops, but not from the denominators).
    assert got["results"] == [
        {"dimensions": ["US"], "metrics": [2, 50.0, 100.0]},
        {"dimensions": ["DE"], "metrics": [1, 25.0, 50.0]},
    ]


def test_average_revenue_and_money_shape(tmp_path: Path) -> None:
    got = ask(tmp_path, metrics=["total_revenue", "average_revenue"],
              filters=[["is", "event:goal", ["Purchase"]]])  # fmt: skip
    assert got["results"][0]["metrics"] == [
        {"short": "$1.3K", "long": "$1,322.72", "value": 1322.72, "currency": "USD"},
        {"short": "$661.4", "long": "$661.36", "value": 661.36, "currency": "USD"},
    ]
    assert money(Decimal("-4.5"), "EUR")["long"] == "-€4.50"
    assert money(Decimal("2500000"), "CHF")["short"] == "CHF\u00a02.5M"


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [({"metrics": ["conversion_rate"]}, "metrics[0]", "can only be queried with event:goal"),
     ({"metrics": ["visitors"], "filters": [["is", "event:goal", ["Nope"]]]}, "filters[0]",
      "The goal `Nope` is not configured for this site"),
     ({"metrics": ["visitors"], "filters": [["is", "visit:country", ["US"]],
       ["matches", "event:goal", ["\\x{53}ignup"]]]}, "filters[1]",
      "Invalid regular expression for event:goal")],
)  # fmt: skip
def test_goal_refusals(body: dict[str, Any], where: str, message: str) -> None:
    full = {"site_id": SITE, "date_range": "7d", **body}
    with pytest.raises(StatsQueryError) as caught:
        with_goals(parse_query(full, BASE), GOALS)
    assert caught.value.errors[0].field == where
    assert message in caught.value.message
