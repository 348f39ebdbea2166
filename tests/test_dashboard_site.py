"""GET /dashboard/<site> as a site owner sees it: the real service, known visits of two
sites, headless Chromium driven over DevTools (``live_page``): every number shown equals
the visits model (tests/visits_model.py) of what was sent, before and after a filter set
by clicking a row; the other site never shows; event values stay text.

Set EA_DOCS_SCREENSHOT=1 to also write docs/dashboard-site.png and -phone.png.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from event_analytics.analytics.stats_spec import parse_query, with_goals
from event_analytics.goals import Goal
from tests import visits_model as model
from tests.browser import LivePage, live_page
from tests.helpers import HTTP, event
from tests.readback import wait_stats_archived
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
READ = "site-dashboard-read-key-0001"
AUTH = {"Authorization": f"Bearer {READ}"}
SITE, OTHER = "shop.example", "other.example"
TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"]
WAIT_S = 60
# Markup in every field that reaches the page; each would set window.__xss if it ran.
XSS = {
    "page": "/<img/src=x/onerror=window.__xss=1>",
    "referrer": "<script>window.__xss=2</script>",
    "utm_source": '<img src=x onerror="window.__xss=3">',
    "source": "<svg/onload=window.__xss=4>",
    "plan": "<iframe src=javascript:window.__xss=5>",
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("site-dash")
    proc = ServiceProcess(root / "data", env={"EA_READ_KEYS": READ})
    proc.start()
    yield proc
    proc.stop()


def days() -> tuple[date, date, date, date]:
    """The page's custom range (the two days before today, whole and past whatever the
    time) and the period before it, which "previous period" compares with."""
    today = datetime.now(UTC).date()
    return tuple(today - timedelta(days=n) for n in (2, 1, 4, 3))  # type: ignore[return-value]


def plan() -> list[dict[str, Any]]:
    """Visits of both sites over the four days: 1-4 events each, some bounces, a custom
    event, visitors coming back after hours (a new visit), and one visit of markup."""
    rng = random.Random(25)
    first = days()[2]
    bodies = []
    for i in range(40):
        user = f"v{i}"
        site = SITE if i % 5 else OTHER
        attrs = {
            "source": rng.choice(["Google", "Twitter", "Newsletter", None]),
            "country": rng.choice(["US", "DE", "GB"]),
            "device": rng.choice(["desktop", "mobile"]),
            "browser": rng.choice(["Chrome", "Firefox", "Safari"]),
            "os": rng.choice(["Linux", "iOS", "Windows"]),
        }
        if site == OTHER:
            attrs |= {"source": "Secret-B-Source", "country": "JP"}
        for _ in range(rng.randint(1, 3)):
            day = first + timedelta(days=rng.randint(0, 3))
            t = datetime(day.year, day.month, day.day, rng.randint(1, 21), tzinfo=UTC)
            t += timedelta(minutes=rng.randint(0, 59), seconds=i)
            for k in range(rng.randint(1, 4)):
                page = rng.choice(["/", "/pricing", "/docs", "/blog/launch"])
                if site == OTHER:
                    page = "/b-secret"
                kind = "page_view" if k == 0 or rng.random() < 0.7 else "signup"
                payload = {key: v for key, v in attrs.items() if v is not None}
                at = t + timedelta(seconds=97 * k)
                url = f"https://{site}{page}"
                bodies.append(event(user=user, ts=at, event_type=kind, url=url, domain=site,
                                    **payload))  # fmt: skip
    day = days()[1]
    t = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    bodies.append(event(user="markup", ts=t, url=f"https://{SITE}{XSS['page']}", domain=SITE,
                        referrer=XSS["referrer"], utm_source=XSS["utm_source"],
                        source=XSS["source"], plan=XSS["plan"]))  # fmt: skip
    return bodies


@pytest.fixture(scope="module")
def sent(svc: ServiceProcess) -> list[dict[str, Any]]:
    """The events sent, as archive records for the model (in the order sent, so ties
    cannot happen: each visitor's events are seconds apart)."""
    bodies = plan()
    r = HTTP.post(f"{svc.url}/events/batch", json={"events": bodies})
    assert r.status_code == 200 and r.json()["accepted"] == len(bodies), r.text
    wait_stats_archived(svc, SITE, AUTH, datetime.now(UTC), WAIT_S)
    return model.records_of(bodies)


def expect(
    records: list[dict[str, Any]], frm: date, to: date, metrics: list[str],
    goals: tuple[Goal, ...] = (), **extra: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """The model's answer to the v2 query the page sends over [frm, to] (the site's
    ``goals`` for a goal dimension, filter or metric)."""
    body = {"site_id": SITE, "metrics": metrics,
            "date_range": [frm.isoformat(), to.isoformat()], **extra}  # fmt: skip
    q = with_goals(parse_query(body, datetime.now(UTC)), goals)
    start = datetime(frm.year, frm.month, frm.day, tzinfo=UTC)
    end = datetime(to.year, to.month, to.day, tzinfo=UTC) + timedelta(days=1)
    unit = next((d.split(":")[1] for d in q.dimensions if d.startswith("time:")), None)
    rows, _, _ = model.query(records, q, start, end, 1800, unit)
    return rows


def js_round(x: float) -> int:
    return math.floor(x + 0.5)  # JavaScript's Math.round


def change(metric: str, now: float, before: float) -> str:
    """What the page's change says, from the model's numbers."""
    if metric == "bounce_rate":
        return str(now - before)
    if not before:
        return ""
    return str(js_round(((now - before) / before) * 100))


SHOWN = """JSON.stringify({
  top: Object.fromEntries(%s.map((m) => [m, document.getElementById('m-' + m).dataset.value])),
  changes: Object.fromEntries(%s.map((m) =>
    [m, document.getElementById('c-' + m).dataset.value])),
  sources: [...document.querySelectorAll('#panel-sources ol.rows li')].map((li) =>
    [li.dataset.value, Number(li.dataset.visitors)]),
  chips: [...document.querySelectorAll('#chips .chip')].map((c) =>
    [c.dataset.op, c.dataset.dim, c.dataset.value]),
  graph: document.getElementById('graph').dataset.points,
  compared: document.getElementById('graph').dataset.compared,
  text: document.body.innerText,
  search: location.search,
  archived: document.getElementById('top-source').dataset.archivedUntil,
  error: document.getElementById('error').hidden ? ''
    : document.getElementById('error').textContent,
})""" % (json.dumps(TOP), json.dumps(TOP))  # noqa: UP031


BOXES = """JSON.stringify([...document.querySelectorAll('.stat, .panel, #graph, .toolbar')]
  .map((e) => e.getBoundingClientRect()).map((r) => [Math.round(r.top), Math.round(r.height)]))"""


def shown(page: LivePage) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(page.evaluate(SHOWN))
    return value


def settle(page: LivePage, rounds: int) -> None:
    page.wait_until(
        "document.body && document.body.dataset.ready === '1' && "
        f"Number(document.body.dataset.rounds || 0) >= {rounds}",
        WAIT_S,
    )


def check_numbers(
    page: LivePage, records: list[dict[str, Any]], filters: list[Any],
    goals: tuple[Goal, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """Top row, changes, the graph and the sources panel against the model."""
    frm, to, pfrm, pto = days()
    got = shown(page)
    assert got["error"] == ""
    metrics = [m for m in TOP if not (m == "views_per_visit" and any(
        f[1].startswith("event:") for f in filters))]  # fmt: skip
    (now,) = expect(records, frm, to, metrics, goals, filters=filters)
    (before,) = expect(records, pfrm, pto, metrics, goals, filters=filters)
    want_top = dict(zip(metrics, (str(v) for v in now["metrics"]), strict=True))
    assert {m: v for m, v in got["top"].items() if m in want_top} == want_top
    assert now["metrics"][0] > 0 and before["metrics"][0] > 0, "the model must count something"
    want_changes = {m: change(m, a, b) for m, a, b in zip(metrics, now["metrics"],
                    before["metrics"], strict=True)}  # fmt: skip
    assert {m: v for m, v in got["changes"].items() if m in want_changes} == want_changes
    sources = expect(
        records, frm, to, ["visitors"], goals, dimensions=["visit:source"], filters=filters
    )
    assert got["sources"] == [[r["dimensions"][0], r["metrics"][0]] for r in sources[:9]]
    per_day = expect(
        records, frm, to, ["visitors"], goals, dimensions=["time:day"], filters=filters
    )
    by_day = {r["dimensions"][0].date().isoformat(): r["metrics"][0] for r in per_day}
    want_graph = [[d.isoformat(), by_day.get(d.isoformat(), 0)] for d in (frm, to)]
    assert json.loads(got["graph"]) == want_graph
    per_day = expect(
        records, pfrm, pto, ["visitors"], goals, dimensions=["time:day"], filters=filters
    )
    by_day = {r["dimensions"][0].date().isoformat(): r["metrics"][0] for r in per_day}
    assert json.loads(got["compared"]) == [[d.isoformat(), by_day.get(d.isoformat(), 0)]
                                           for d in (pfrm, pto)]  # fmt: skip
    assert got["archived"] and datetime.fromisoformat(got["archived"]) > max(
        datetime.fromisoformat(r["timestamp"]) for r in records
    )
    return got


def test_site_page_shows_the_model_and_filters_by_click(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """Top row, changes against the previous period, graph and sources equal the model;
    a click on a source row filters the page to the model with that filter; a bookmark
    reproduces it; is-not and AND; chips removed; the other site and markup never show."""
    frm, to, _, _ = days()
    url = f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}#key={READ}"
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(url)
        settle(page, 1)
        got = check_numbers(page, sent, [])
        assert got["chips"] == []
        assert "compare=previous" in got["search"] and "metric=visitors" in got["search"]
        # The other site's events are in no number and no row.
        assert "Secret-B-Source" not in got["text"] and "b-secret" not in got["text"]
        assert "JP" not in [r[0] for r in got["sources"]]
        # Markup from events is text: in the rows as sent, never an element, never run.
        values = page.evaluate(
            "[...document.querySelectorAll('ol.rows li')].map((li) => li.dataset.value)"
        )
        assert XSS["source"] in values and XSS["page"] in values
        injected = "document.querySelectorAll('img, svg, iframe, object, embed').length"
        assert page.evaluate(injected) == 0
        # No script beyond the page's own tags (site.html's).
        html = (REPO / "src" / "event_analytics" / "dashboard" / "site.html").read_text()
        assert page.evaluate("document.scripts.length") == html.count("<script ") == 10
        assert page.evaluate("typeof window.__xss") == "undefined"
        # No goals on this site: no goal numbers and no Goals panel on the page.
        shown_goals = (
            "['s-conversions', 's-revenue', 'panel-goals'].map((id) => "
            "getComputedStyle(document.getElementById(id)).display)"
        )
        assert page.evaluate(shown_goals) == ["none", "none", "none"]

        # Click "Google": a chip, the URL, and every number is the filtered model's.
        page.evaluate(
            "document.querySelector('#panel-sources li[data-value=\"Google\"] button.name').click()"
        )
        settle(page, 2)
        google = [["is", "visit:source", ["Google"]]]
        got = check_numbers(page, sent, google)
        assert got["chips"] == [["is", "visit:source", "Google"]]
        assert "f=is%7Cvisit%3Asource%7CGoogle" in got["search"]
        # The bookmark: the same view from its URL alone.
        page.open(f"{svc.url}/dashboard/{SITE}{got['search']}")
        settle(page, 1)
        assert check_numbers(page, sent, google)["chips"] == got["chips"]
        # "is not" from a row's ≠, beside the chip: both filters hold (AND).
        page.evaluate(
            "document.querySelector('#panel-countries li[data-value=\"US\"] button.not').click()"
        )
        settle(page, 2)
        both = [*google, ["is_not", "visit:country", ["US"]]]
        got = check_numbers(page, sent, both)
        assert got["chips"] == [["is", "visit:source", "Google"], ["is_not", "visit:country", "US"]]
        # Removing the chips brings the whole site back.
        page.evaluate("document.querySelector('#chips .remove').click()")
        settle(page, 3)
        page.evaluate("document.querySelector('#chips .remove').click()")
        settle(page, 4)
        assert check_numbers(page, sent, [])["chips"] == []
        # A page filter (an event:* one): the visits with a view of /pricing; views per
        # visit is not defined then (the API refuses it), and shows so.
        page.evaluate(
            "document.querySelector('#panel-pages li[data-value=\"/pricing\"] button.name').click()"
        )
        settle(page, 5)
        got = check_numbers(page, sent, [["is", "event:page", ["/pricing"]]])
        assert got["top"]["views_per_visit"] == "" and got["changes"]["views_per_visit"] == ""
        assert page.console() == []


COMPARED = """(() => {
  window.__compared = null;
  let n = 0;
  const orig = EARetry.fetch;
  EARetry.fetch = (...a) => { n++; return orig(...a); };
  const range = { from: %s, to: %s, days: 2 };
  const ask = (body) =>
    EASite.withComparison({ site_id: %s, filters: [], ...body }, range, 'previous');
  (async () => {
    const top = await ask({ metrics: ['visitors', 'visits', 'bounce_rate'] });
    const one = n;
    const hourly = await ask({ metrics: ['visitors'], dimensions: ['time:hour'],
                               include: { time_labels: true } });
    const pairs = (a) => a.results.map((r) => [r.dimensions[0], r.metrics[0]]);
    window.__compared = JSON.stringify({
      top: [one, top.current.results[0].metrics, top.previous.results[0].metrics, top.range],
      hourly: [n - one, hourly.range, pairs(hourly.previous)],
    });
  })().finally(() => { EARetry.fetch = orig; });
})()"""


def test_comparison_comes_from_the_api_in_one_request(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """withComparison asks once (include.comparisons) and its compared numbers are the
    model's over the period before; a time series with empty buckets (hours here), whose
    compared values the API's row pairing cannot carry, asks the compared range itself."""
    frm, to, pfrm, pto = days()
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}#key={READ}")
        settle(page, 1)
        page.evaluate(COMPARED % (json.dumps(frm.isoformat()), json.dumps(to.isoformat()),
                                  json.dumps(SITE)))  # fmt: skip
        page.wait_until("window.__compared !== null", WAIT_S)
        got = json.loads(page.evaluate("window.__compared"))
    metrics = ["visitors", "visits", "bounce_rate"]
    (now,) = expect(sent, frm, to, metrics)
    (before,) = expect(sent, pfrm, pto, metrics)
    span = {"from": pfrm.isoformat(), "to": pto.isoformat(), "days": 2}
    assert got["top"] == [1, now["metrics"], before["metrics"], span]
    hours = expect(sent, pfrm, pto, ["visitors"], dimensions=["time:hour"])
    assert got["hourly"][0] == 2 and got["hourly"][1] == span
    assert got["hourly"][2] == [[r["dimensions"][0].strftime("%Y-%m-%d %H:%M:%S"),
                                 r["metrics"][0]] for r in hours]  # fmt: skip


def test_details_search_and_metric_switch(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """Comparison off; a number clicked is the graph's metric; the details view's search;
    the range picker's days and the compared ranges; /dashboard/sites picks a site."""
    frm, to, _, _ = days()
    url = f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}&compare=off#key={READ}"
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(url)
        settle(page, 1)
        assert shown(page)["changes"] == dict.fromkeys(TOP, "")
        # The visits number: the graph shows visits per day.
        page.evaluate("document.querySelector('.stat[data-metric=\"visits\"]').click()")
        page.wait_until("document.getElementById('graph').dataset.metric === 'visits'", WAIT_S)
        per_day = expect(sent, frm, to, ["visits"], dimensions=["time:day"])
        by_day = {r["dimensions"][0].date().isoformat(): r["metrics"][0] for r in per_day}
        graph = json.loads(page.evaluate("document.getElementById('graph').dataset.points"))
        assert graph == [[d.isoformat(), by_day.get(d.isoformat(), 0)] for d in (frm, to)]
        assert "metric=visits" in page.evaluate("location.search")
        # Details of top pages, searched: a contains filter, case-insensitive.
        page.evaluate("document.querySelector('#panel-pages .more').click()")
        page.wait_until("document.querySelectorAll('#details-rows li').length > 0", WAIT_S)
        page.evaluate("const s = document.getElementById('details-search'); s.value = 'PRIC';"
                      "s.dispatchEvent(new Event('input'))")  # fmt: skip
        page.wait_until(
            "[...document.querySelectorAll('#details-rows li')].map((li) => li.dataset.value)"
            ".join() === '/pricing'",
            WAIT_S,
        )
        (row,) = expect(sent, frm, to, ["visitors"], dimensions=["event:page"],
                        filters=[["contains", "event:page", ["pric"]]])  # fmt: skip
        assert page.evaluate("document.querySelector('#details-rows li').dataset.visitors") == str(
            row["metrics"][0]
        )
        # The range picker's calendar ranges (whole UTC days, both ends included).
        ranges = page.evaluate(
            "const at = new Date(Date.UTC(2026, 0, 15, 23, 59)); Object.fromEntries(['today', "
            "'yesterday', '7d', '30d', 'month', 'lastmonth'].map((n) => [n, "
            "[EARange.days(n, at).from, EARange.days(n, at).to, EARange.days(n, at).days]]))"
        )
        assert ranges == {
            "today": ["2026-01-15", "2026-01-15", 1],
            "yesterday": ["2026-01-14", "2026-01-14", 1],
            "7d": ["2026-01-09", "2026-01-15", 7],
            "30d": ["2025-12-17", "2026-01-15", 30],
            "month": ["2026-01-01", "2026-01-15", 15],
            "lastmonth": ["2025-12-01", "2025-12-31", 31],
        }  # fmt: skip
        compared = page.evaluate(
            "const r = {from: '2026-03-01', to: '2026-03-31', days: 31}; "
            "[EASite.comparedRange(r, 'previous'), EASite.comparedRange(r, 'year'), "
            "EASite.comparedRange(r, 'off')]"
        )
        assert compared == [
            {"from": "2026-01-29", "to": "2026-02-28", "days": 31},
            {"from": "2025-03-01", "to": "2025-03-31", "days": 31},
            None,
        ]
        assert page.console() == []
        # /dashboard/sites opens the site with the most events.
        page.open(f"{svc.url}/dashboard/sites?range=custom&from={frm}&to={to}")
        page.wait_until(f"location.pathname === '/dashboard/{SITE}'", WAIT_S)
        settle(page, 1)
        options = page.evaluate("[...document.querySelectorAll('#site-picker option')]"
                                ".map((o) => [o.value, o.selected])")  # fmt: skip
        assert options == [[SITE, True], [OTHER, False]]


def test_phone_width_and_screenshots(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """At 390 px nothing scrolls sideways; at both widths a screenshot from a real run."""
    frm, to, _, _ = days()
    url = f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}#key={READ}"
    with live_page(chromium, tmp_path / "profile") as page:
        # Where the boxes are before any number arrived (the page's script has built the
        # panels by then; its requests are still out), to compare with after.
        early = (
            f"document.addEventListener('DOMContentLoaded', () => {{ window.__before = {BOXES}; }})"
        )
        page.send("Page.enable", {}, page.session)
        page.send("Page.addScriptToEvaluateOnNewDocument", {"source": early}, page.session)
        for name, width, height, mobile in (("dashboard-site", 1280, 900, False),
                                            ("dashboard-site-phone", 390, 844, True)):  # fmt: skip
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
            page.send("Emulation.setDeviceMetricsOverride", metrics, page.session)
            page.open(url)
            settle(page, 1)
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            # No layout shift: every box where it was before the numbers came.
            before = json.loads(page.evaluate("window.__before"))
            after = json.loads(page.evaluate(BOXES))
            assert len(before) == len(after) > 10 and before == after, (before, after)
            # Controls are reachable from the keyboard: buttons, links and inputs.
            controls = (
                ".stat[data-metric], ol.rows li:not(.empty) > :first-child, .tablist *, .more"
            )
            tags = page.evaluate(
                f"[...document.querySelectorAll('{controls}')].map((e) => e.tagName)"
            )
            assert set(tags) <= {"BUTTON", "SPAN"} and "BUTTON" in tags
            full = page.evaluate("document.documentElement.scrollHeight")
            clip = {"x": 0, "y": 0, "width": width, "height": full, "scale": 1}
            options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
            shot = page.send("Page.captureScreenshot", options, page.session, timeout_s=30)
            path = tmp_path / f"{name}.png"
            path.write_bytes(base64.b64decode(shot["data"]))
            if os.environ.get("EA_DOCS_SCREENSHOT"):
                shutil.copyfile(path, REPO / "docs" / f"{name}.png")
        assert page.console() == []


def test_sites_route_lists_the_archive_sites(
    svc: ServiceProcess, sent: list[dict[str, Any]]
) -> None:
    """GET /api/sites: each site's distinct visitors and events in the range, as sent."""
    frm, to, pfrm, _ = days()
    r = HTTP.get(f"{svc.url}/api/sites", params={"date_range": f"{pfrm},{to}"}, headers=AUTH)
    assert r.status_code == 200, r.text
    want: dict[str, tuple[set[str], int]] = {}
    for e in sent:
        users, n = want.get(e["payload"]["domain"], (set(), 0))
        want[e["payload"]["domain"]] = (users | {e["user_id"]}, n + 1)
    rows = [(s, len(u), n) for s, (u, n) in want.items()]
    rows.sort(key=lambda row: (-row[2], row[0]))
    got = r.json()
    assert [(s["site_id"], s["visitors"], s["events"]) for s in got["sites"]] == rows
    assert got["meta"]["method"] == "exact" and got["meta"]["date_range"][0] == f"{pfrm}T00:00:00Z"
    # Bad ranges are 400 problem+json naming the field; no key, 401.
    for bad in ("bogus", f"{to},{frm}", "2024-01-01,nope"):
        r = HTTP.get(f"{svc.url}/api/sites", params={"date_range": bad}, headers=AUTH)
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["errors"][0]["field"] == "date_range", r.text
    assert HTTP.get(f"{svc.url}/api/sites").status_code == 401
    # The pages hold no data: public; ?site= goes to the site's page.
    assert HTTP.get(f"{svc.url}/dashboard/{SITE}").status_code == 200
    r = HTTP.get(f"{svc.url}/dashboard", params={"site": SITE, "range": "7d"})
    assert r.status_code == 307 and r.headers["location"] == f"dashboard/{SITE}?range=7d"


def test_current_visitors(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """Visitors with an event of the site in the last 5 minutes: the page's live number
    (GET /api/sites over those minutes), the other site's visitors not among them."""
    now = datetime.now(UTC)
    fresh = [
        event(user=user, ts=now - timedelta(seconds=back), url=f"https://{site}/", domain=site)
        for user, back, site in [("now-1", 30, SITE), ("now-1", 20, SITE), ("now-2", 10, SITE),
                                 ("now-3", 10, OTHER)]
    ]  # fmt: skip
    r = HTTP.post(f"{svc.url}/events/batch", json={"events": fresh})
    assert r.status_code == 200 and r.json()["accepted"] == len(fresh), r.text
    sent_at = datetime.now(UTC)
    frm, to, _, _ = days()
    url = f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}#key={READ}"
    with live_page(chromium, tmp_path / "profile") as page:
        deadline = time.monotonic() + WAIT_S
        while True:  # until a round of the page read an archive holding the fresh events
            page.open(url)
            settle(page, 1)
            current = "document.getElementById('current-visitors')"
            until = page.evaluate(f"{current}.dataset.archivedUntil")
            if datetime.fromisoformat(until) > sent_at:
                break
            assert time.monotonic() < deadline, until
            time.sleep(0.5)
        assert page.evaluate(f"{current}.dataset.value") == "2"


def test_shared_link_page_shows_the_site_without_a_key(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """/share/<site>?auth=<token> serves the site page; with no key in the fragment (a
    fresh profile: nothing kept) it reads with the link's token and shows the model's
    numbers of that site only; once revoked, the page says it is refused."""
    made = HTTP.post(f"{svc.url}/api/v1/sites/shared-links",
                     json={"site_id": SITE, "name": "browser"}, headers=AUTH)  # fmt: skip
    assert made.status_code == 201, made.text
    link = made.json()
    # Embedding is off by default: ?embed=true still forbids framing.
    framed = HTTP.get(f"{svc.url}{link['url']}&embed=true")
    assert framed.headers["x-frame-options"] == "DENY"
    assert framed.headers["content-security-policy"] == "frame-ancestors 'none'"
    frm, to, _, _ = days()
    url = f"{svc.url}{link['url']}&range=custom&from={frm}&to={to}"
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(url)
        settle(page, 1)
        got = check_numbers(page, sent, [])
        assert "Secret-B-Source" not in got["text"] and "b-secret" not in got["text"]
    gone = HTTP.delete(f"{svc.url}/api/v1/sites/shared-links/{link['id']}",
                       params={"site_id": SITE}, headers=AUTH)  # fmt: skip
    assert gone.status_code == 200, gone.text
    with live_page(chromium, tmp_path / "profile2") as page:
        page.open(url)
        page.wait_until("document.body && /401/.test(document.body.innerText)", WAIT_S)


def test_password_link_page_asks_before_showing_anything(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    """A link with a password: its page shows a password dialog and no number; a wrong
    password is said so and still shows nothing; the right one shows the model's numbers."""
    password = "page-password-25"
    made = HTTP.post(f"{svc.url}/api/v1/sites/shared-links",
                     json={"site_id": SITE, "name": "locked", "password": password},
                     headers=AUTH)  # fmt: skip
    assert made.status_code == 201, made.text
    frm, to, _, _ = days()
    url = f"{svc.url}{made.json()['url']}&range=custom&from={frm}&to={to}"
    submit = (
        "(() => { document.getElementById('share-password-input').value = {pw};"
        " document.getElementById('share-password-form').requestSubmit(); return 1; })()"
    )
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(url)
        # ?. : the element is not there while the page is still loading.
        page.wait_until("document.getElementById('share-password')?.open === true", WAIT_S)
        settle(page, 1)
        assert (
            page.evaluate("document.getElementById('m-visitors').textContent") == "\u2013"
        )  # the placeholder dash
        page.evaluate(submit.replace("{pw}", json.dumps(password + "-wrong")))
        page.wait_until(
            "document.getElementById('share-password-said').textContent === 'wrong password'",
            WAIT_S,
        )
        assert (
            page.evaluate("document.getElementById('m-visitors').textContent") == "\u2013"
        )  # the placeholder dash
        page.evaluate(submit.replace("{pw}", json.dumps(password)))
        # The page reloads with the unlock: its first round then shows the numbers.
        page.wait_until(
            "document.getElementById('share-password')?.open === false"
            " && document.body?.dataset.ready === '1'",
            WAIT_S,
        )
        got = check_numbers(page, sent, [])
        assert "Secret-B-Source" not in got["text"] and "b-secret" not in got["text"]
