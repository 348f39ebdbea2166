"""The site page's goals (static/site-goals.js) in headless Chromium against the model:
the Goals panel, the top row's conversions and revenue, and a click on a goal filtering
the whole page. Its own service (the goals change what the other page tests see)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from event_analytics.goals import Goal, Kind
from tests.browser import LivePage, live_page
from tests.helpers import HTTP
from tests.servers import ServiceProcess
from tests.test_dashboard_site import AUTH, READ, SITE, change, check_numbers, days, expect, settle
from tests.test_dashboard_site import sent as sent  # the fixtures: one service for this module
from tests.test_dashboard_site import svc as svc

pytestmark = pytest.mark.slow

GOALS_SHOWN = """JSON.stringify({
  hidden: ['s-conversions', 's-revenue', 'panel-goals'].map((id) =>
    getComputedStyle(document.getElementById(id)).display === 'none'),
  rows: [...document.querySelectorAll('#goal-rows li')].map((li) =>
    [li.dataset.value, JSON.parse(li.dataset.metrics)]),
  top: ['conversions', 'revenue'].map((id) =>
    document.getElementById('m-' + id).dataset.value),
  changes: ['conversions', 'revenue'].map((id) =>
    document.getElementById('c-' + id).dataset.value),
})"""


def make_goals(svc: ServiceProcess) -> tuple[Goal, ...]:
    """A revenue goal on the custom event and a page goal, made through the Sites API."""
    for body in (
        {"site_id": SITE, "goal_type": "event", "event_name": "signup", "currency": "USD"},
        {"site_id": SITE, "goal_type": "page", "page_path": "/pricing"},
    ):
        r = HTTP.put(f"{svc.url}/api/v1/sites/goals", json=body, headers=AUTH)
        assert r.status_code in (200, 201), r.text
    listed = HTTP.get(f"{svc.url}/api/v1/sites/goals", params={"site_id": SITE}, headers=AUTH)
    return tuple(
        Goal(g["id"], SITE, Kind(g["goal_type"]), g["event_name"], g["page_path"],
             g["currency"], g["display_name"])
        for g in listed.json()["goals"]
    )  # fmt: skip


def money_value(v: Any) -> Any:
    return v["value"] if isinstance(v, dict) else None


def check_goals(
    page: LivePage, records: list[dict[str, Any]], goals: tuple[Goal, ...], filters: list[Any]
) -> None:
    frm, to, pfrm, pto = days()
    got = json.loads(page.evaluate(GOALS_SHOWN))
    assert got["hidden"] == [False, False, False]
    metrics = ["visitors", "events", "conversion_rate", "total_revenue"]
    rows = expect(records, frm, to, metrics, goals, dimensions=["event:goal"], filters=filters)
    assert rows, "the model must count conversions"
    assert got["rows"] == [
        [r["dimensions"][0], [*r["metrics"][:3], money_value(r["metrics"][3])]] for r in rows
    ]
    if not any(f[1] == "event:goal" for f in filters):
        filters = [*filters, ["is", "event:goal", [g.display_name for g in goals]]]
    (now,) = expect(records, frm, to, ["events", "total_revenue"], goals, filters=filters)
    (before,) = expect(records, pfrm, pto, ["events", "total_revenue"], goals, filters=filters)
    values = [now["metrics"][0], money_value(now["metrics"][1])]
    olds = [before["metrics"][0], money_value(before["metrics"][1])]
    assert got["top"] == ["" if v is None else str(v) for v in values]
    assert got["changes"] == [
        change(m, a, b) if a is not None and b is not None else ""
        for m, a, b in zip(["events", "total_revenue"], values, olds, strict=True)
    ]


def test_goals_panel_top_row_and_click_to_filter(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """With goals, the Goals panel and the conversions/revenue numbers equal the model;
    a click on a goal filters every number on the page by it."""
    goals = make_goals(svc)
    frm, to, _, _ = days()
    url = f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}#key={READ}"
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(url)
        settle(page, 1)
        check_goals(page, sent, goals, [])
        check_numbers(page, sent, [], goals)
        page.evaluate(
            'document.querySelector(\'#goal-rows li[data-value="Visit /pricing"] '
            "button.name').click()"
        )
        settle(page, 2)
        chosen = [["is", "event:goal", ["Visit /pricing"]]]
        got = check_numbers(page, sent, chosen, goals)
        assert got["chips"] == [["is", "event:goal", "Visit /pricing"]]
        check_goals(page, sent, goals, chosen)
        assert page.console() == []


PROPS_SHOWN = """JSON.stringify({
  hidden: getComputedStyle(document.getElementById('panel-goal-props')).display === 'none',
  rows: [...document.querySelectorAll('#goal-props-rows li[data-metrics]')].map((li) =>
    [li.dataset.value, JSON.parse(li.dataset.metrics)]),
  search: location.search,
})"""


def check_props(
    page: LivePage, records: list[dict[str, Any]], goals: tuple[Goal, ...], goal: str, prop: str
) -> None:
    frm, to, _, _ = days()
    page.wait_until(
        "document.getElementById('goal-props-rows').dataset.shown === "
        f"{json.dumps(json.dumps([goal, prop], separators=(',', ':')))}"
        " && document.body.dataset.ready === '1'",
        60,
    )
    got = json.loads(page.evaluate(PROPS_SHOWN))
    rows = expect(records, frm, to, ["visitors", "events", "total_revenue"], goals,
                  dimensions=[f"event:props:{prop}"],
                  filters=[["is", "event:goal", [goal]]])  # fmt: skip
    assert len([r for r in rows if r["dimensions"][0] is not None]) >= 2, rows
    assert not got["hidden"]
    assert got["rows"] == [
        ["" if r["dimensions"][0] is None else r["dimensions"][0],
         [*r["metrics"][:2], money_value(r["metrics"][2])]]
        for r in rows
    ]  # fmt: skip
    assert f"prop={prop}" in got["search"]


def test_goal_properties_panel(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """For a chosen goal and property name, each value's visitors, conversions and revenue
    equal the model; a bookmark with ?goal=&prop= reopens the same view."""
    goals = make_goals(svc)
    signup = next(g.display_name for g in goals if g.event_name == "signup")
    pricing = next(g.display_name for g in goals if g.page_path == "/pricing")
    frm, to, _, _ = days()
    url = f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}#key={READ}"
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(url)
        settle(page, 1)
        assert page.evaluate("document.getElementById('goal-props-rows').children.length") == 0
        page.evaluate(
            f"document.getElementById('goal-props-goal').value = {json.dumps(signup)};"
            "document.getElementById('goal-props-name').value = 'browser';"
            "document.getElementById('goal-props-form').requestSubmit()"
        )
        check_props(page, sent, goals, signup, "browser")
        bookmark = page.evaluate("location.href")
        page.evaluate(
            f"document.getElementById('goal-props-goal').value = {json.dumps(pricing)};"
            "document.getElementById('goal-props-goal').dispatchEvent(new Event('change'))"
        )
        check_props(page, sent, goals, pricing, "browser")
        assert page.console() == []
    with live_page(chromium, tmp_path / "profile2") as page:
        page.open(bookmark + f"#key={READ}")
        settle(page, 1)
        check_props(page, sent, goals, signup, "browser")
