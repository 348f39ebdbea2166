"""GET /dashboard as a person sees it: the real service, known events, headless Chromium.

Chromium renders the page (its scripts fetch the real JSON endpoints); the test reads
the rendered DOM and compares every number shown with a model of the events it sent,
then takes a screenshot and checks that the chart was painted.

Set EA_DOCS_SCREENSHOT=1 (or run `make screenshot`) to also write docs/dashboard.png.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from event_analytics import dashboard
from tests.backends import own_engine_env
from tests.browser import Dom, live_page, render, run_chromium
from tests.clients import DESKTOP_CHROME
from tests.helpers import HTTP, event, wait_for
from tests.png import colour_counts, near
from tests.scrape import scrape, value
from tests.servers import ServiceProcess, stopped_after

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PAGES = {  # page → weight: distinct counts, so the order of top pages is meaningful
    "https://example.com/": 9,
    "https://example.com/pricing": 5,
    "https://example.com/docs/getting-started": 4,
    "https://example.com/blog/launch": 2,
    "https://example.com/signup": 1,
}
USERS = [f"user_{i}" for i in range(12)]
MINUTES_BACK = 45  # inside the 60-minute window even if the minute turns during the test

# Colours of dashboard.css / dashboard.js, as painted in a screenshot.
BAR_FILL = (179, 201, 248)  # rgba(37, 99, 235, 0.35) over white
USERS_LINE = (234, 88, 12)  # #ea580c
BANNER = (254, 242, 242)  # #fef2f2


# ---- the service and its data -----------------------------------------------------------


def _serve(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    env: dict[str, str] | None = None,
) -> Iterator[ServiceProcess]:
    """A service of its own (archive, key prefix ``name:``) on the fixture's engine."""
    env = own_engine_env(request, f"{name}:") | (env or {})
    with stopped_after(ServiceProcess(tmp_path_factory.mktemp(name) / "data", env)) as svc:
        yield svc


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service as `make run` starts it (embedded Valkey), or on the cluster; archiver on."""
    yield from _serve(request, tmp_path_factory, "dash")


def minute_of(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def traffic(now: datetime) -> list[dict[str, object]]:
    """Seeded page views over the last 45 minutes, none in the future."""
    rng = random.Random(8)
    current = minute_of(now)
    events = []
    for back in range(MINUTES_BACK, -1, -1):
        minute = current - timedelta(minutes=back)
        span = min(59.0, (now - minute).total_seconds())
        for _ in range(rng.randint(0, 14)):
            ts = minute + timedelta(seconds=rng.uniform(0, span))
            page = rng.choices(list(PAGES), weights=list(PAGES.values()))[0]
            events.append(event(user=rng.choice(USERS), ts=ts, url=page))
    return events


@dataclass
class Model:
    """What the dashboard must show for the events sent."""

    counts: Counter[datetime]
    users: dict[datetime, set[str]]
    pages: Counter[str]
    page_users: dict[str, set[str]]

    @classmethod
    def of(cls, events: list[dict[str, object]]) -> Model:
        model = cls(Counter(), {}, Counter(), {})
        for e in events:
            minute = minute_of(datetime.fromisoformat(str(e["timestamp"])).astimezone(UTC))
            url = str(e["payload"]["page_url"])  # type: ignore[index]
            model.counts[minute] += 1
            model.users.setdefault(minute, set()).add(str(e["user_id"]))
            model.pages[url] += 1
            model.page_users.setdefault(url, set()).add(str(e["user_id"]))
        return model

    def active_users(self, current: datetime) -> int:
        window = [current - timedelta(minutes=i) for i in range(5)]
        return len(set().union(*(self.users.get(m, set()) for m in window)))


def send(svc: ServiceProcess, events: list[dict[str, object]]) -> None:
    reply = HTTP.post(f"{svc.url}/events/batch", json={"events": events})
    assert reply.status_code == 200, reply.text
    assert reply.json()["accepted"] == len(events), reply.text


def wait_archived(svc: ServiceProcess, n: int, timeout_s: float = 30.0) -> None:
    """Until the archiver wrote all n events, so the archive panel has settled numbers."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = HTTP.get(f"{svc.url}/persistent/status").json()
        stats = status["stats"]
        seen = (stats["events_archived"], stats["lag_seconds"], stats["stream_length"])
        if seen == (n, 0, 0) and status["status"] == "healthy":
            return
        assert time.monotonic() < deadline, f"archive did not catch up: {status}"
        time.sleep(0.2)


def render_in_one_minute(chromium: str, tmp_path: Path, url: str) -> Dom:
    """The page rendered with all its reads in one minute. The chart and the realtime
    cards are two reads, sent at once: at a minute's turn each can answer for a minute
    of its own (the chart ending at 22:03, the current minute 22:02), both right. A render
    that began and ended in one minute read both in it; one that did not is done again."""
    for _ in range(3):
        now = datetime.now(UTC)
        if now.second >= 50:  # a render takes seconds: begin it in the next minute
            time.sleep(60.5 - now.second - now.microsecond / 1e6)
        began = minute_of(datetime.now(UTC))
        dom = render(chromium, tmp_path, url)
        if minute_of(datetime.now(UTC)) == began:
            return dom
    raise AssertionError("three renders in a row each read across a minute's turn")


# ---- tests ------------------------------------------------------------------------------


def test_dashboard_renders_what_was_sent(
    service: ServiceProcess, chromium: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    events = traffic(now)
    model = Model.of(events)
    send(service, events)
    wait_archived(service, len(events))

    url = f"{service.url}/dashboard"
    dom = render_in_one_minute(chromium, tmp_path, url)

    # Nothing failed: no banner, no greyed-out panel, a fresh "updated" time, a quiet console.
    assert dom.console == []
    assert dom["error"].attrs.get("hidden") is not None and dom["error"].text() == ""
    assert not [n.attrs.get("id") for n in dom.root.walk() if "stale" in n.classes()]
    assert dom["status-text"].text().startswith("live · updated"), dom["status-text"].text()
    assert "ok" in dom["status-dot"].classes()

    # The chart: a painted canvas, and its data (the page's data table) equal to the model.
    (canvas,) = dom["chart"].all("canvas")
    assert int(canvas.attrs["width"] or 0) > 300 and int(canvas.attrs["height"] or 0) > 100
    rows = [r for r in dom["chart-data"].all("tr") if "data-start" in r.attrs]
    assert len(rows) == 60
    shown = {
        datetime.fromisoformat(str(r.attrs["data-start"])): tuple(
            int(td.text().replace(",", "")) for td in r.all("td")[1:]
        )
        for r in rows
    }
    expected = {m: (model.counts[m], len(model.users.get(m, ()))) for m in shown}
    assert shown == expected
    assert sum(c for c, _ in shown.values()) == len(events)
    assert dom.value("total-count") == len(events)
    assert dom["total-count"].text() == f"{len(events):,}"
    assert dom.value("total-users") == len({e["user_id"] for e in events})

    # Realtime cards, for the minute the page says is current.
    current = max(shown)
    assert dom["current-minute-time"].text() == current.strftime("%H:%M")
    previous = current - timedelta(minutes=1)
    assert dom.value("active-users") == model.active_users(current) > 0
    assert dom.value("current-minute") == model.counts[current]
    assert dom.value("previous-minute") == model.counts[previous]
    assert dom["ingest-minute"].text() == previous.strftime("%H:%M")
    assert dom.value("ingest-rate") == model.counts[previous] / 60
    assert dom["ingest-rate"].text() == f"{model.counts[previous] / 60:.2f}"

    # Top pages: order, counts and distinct users per page.
    page_rows = dom["top-pages"].all("tbody")[0].all("tr")
    table = [
        (r.attrs["data-page-url"], int(r.all("td")[1].attrs["data-value"] or -1),
         int(r.all("td")[2].attrs["data-value"] or -1), r.all("a")[0].text())
        for r in page_rows
    ]  # fmt: skip
    ranked = sorted(model.pages.items(), key=lambda kv: (-kv[1], kv[0]))
    assert table == [(u, c, len(model.page_users[u]), u) for u, c in ranked]
    assert dom["top-pages-empty"].attrs.get("hidden") is not None
    # Native events carry no referrer, address or User-Agent: one row each, without a value.
    whole = [("", len(events), len({e["user_id"] for e in events}))]
    for table in ("sources", "countries", "devices"):
        assert breakdown_table(dom, table) == whole, table

    # Archive panel, after the archiver caught up.
    assert dom["archive-status"].attrs["data-value"] == "healthy"
    assert dom.value("archive-archived") == len(events)
    assert dom.value("archive-lag") == 0 and dom.value("archive-waiting") == 0
    assert dom.value("archive-dead") == 0

    # The screenshot: the bars and the users line are painted, no error banner.
    shot = tmp_path / "dashboard.png"
    run = run_chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert run.console == []
    colours = colour_counts(shot)
    assert sum(colours.values()) == 1280 * 900
    assert near(colours, BAR_FILL, 4) > 2000, colours.most_common(10)
    assert near(colours, USERS_LINE, 4) > 300, colours.most_common(10)
    assert near(colours, BANNER, 1) == 0
    if os.environ.get("EA_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "docs" / "dashboard.png")


def test_dashboard_shows_storage_errors(
    engine_down: ServiceProcess, chromium: str, tmp_path: Path
) -> None:
    """The engine is down: the page says so, per endpoint, instead of showing numbers."""
    dom = render(chromium, tmp_path, f"{engine_down.url}/dashboard")
    banner = dom["error"]
    assert banner.attrs.get("hidden") is None
    assert "Some data could not be loaded" in banner.text()
    items = [li.text() for li in banner.all("li")]
    assert any(i.startswith("GET /analytics/timeseries: 503 Storage unavailable") for i in items)
    assert any(i.startswith("GET /persistent/status: 503") for i in items), items
    assert dom["status-text"].text() == "no data yet"
    assert "bad" in dom["status-dot"].classes()
    for panel in ("chart-panel", "card-active", "pages-panel", "archive-panel"):
        assert "stale" in dom[panel].classes(), panel
    assert dom["active-users"].text() == "\u2013"  # the placeholder: no number shown


def test_dashboard_says_when_the_service_is_unreachable(chromium: str, tmp_path: Path) -> None:
    """The page's files without the service behind them (every fetch fails)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(dashboard.page())
    (site / "dashboard").mkdir()
    shutil.copytree(dashboard.STATIC_DIR, site / "dashboard" / "static")
    dom = render(chromium, tmp_path, (site / "index.html").as_uri())
    banner = dom["error"]
    assert banner.attrs.get("hidden") is None
    assert "Service unreachable" in banner.text(), banner.text()
    # timeseries, realtime, persistent/status, metrics, and the breakdowns' query (once)
    assert [li.text().split(":")[0] for li in banner.all("li")] == [
        "GET /analytics/timeseries", "GET /analytics/realtime", "GET /persistent/status",
        "GET /metrics", "POST /analytics/query"]  # fmt: skip
    assert dom["status-text"].text() == "no data yet"


def test_dashboard_static_files_are_served(service: ServiceProcess) -> None:
    page = HTTP.get(f"{service.url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "__VERSION__" not in page.text
    for name, kind in [
        ("uPlot.iife.min.js", "javascript"),
        ("uPlot.min.css", "text/css"),
        ("dashboard.js", "javascript"),
        ("key.js", "javascript"),
        ("retry.js", "javascript"),
        ("dashboard.css", "text/css"),
        ("uPlot.LICENSE", ""),
    ]:
        r = HTTP.get(f"{service.url}/dashboard/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
        assert f"dashboard/static/{name}" in page.text
    assert HTTP.get(f"{service.url}/dashboard/static/nope.js").status_code == 404
    # Timed under the mount's template, not as "unmatched" like unknown paths.
    route = {"method": "GET", "route": "/dashboard/static/{path}"}
    samples = scrape(service.url)
    assert value(samples, "ea_http_request_duration_seconds_count", **route, status="200") >= 5
    assert value(samples, "ea_http_request_duration_seconds_count", **route, status="404") == 1


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def keyed_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service with its read scope closed (EA_READ_KEYS)."""
    yield from _serve(request, tmp_path_factory, "dashkey", {"EA_READ_KEYS": READ_KEY})


READ_KEY = "dashboard-read-key-0123456789"


def test_dashboard_with_a_read_key(
    keyed_service: ServiceProcess, chromium: str, tmp_path: Path
) -> None:
    """With read keys on, the page reads its key from the fragment and sends it."""
    now = datetime.now(UTC)
    sent = [event(user=f"k{i % 3}", ts=now - timedelta(seconds=5)) for i in range(7)]
    send(keyed_service, sent)
    # Without the key: every data request is refused, and the page says what to do.
    (tmp_path / "no-key").mkdir()
    (tmp_path / "key").mkdir()
    dom = render(chromium, tmp_path / "no-key", f"{keyed_service.url}/dashboard")
    banner = dom["error"]
    assert banner.attrs.get("hidden") is None
    assert "needs a read key" in banner.text(), banner.text()
    assert dom["active-users"].text() == "\u2013"
    # With it (in the fragment, which the browser never sends): the numbers render.
    dom = render(chromium, tmp_path / "key", f"{keyed_service.url}/dashboard#key={READ_KEY}")
    assert dom["error"].attrs.get("hidden") is not None, dom["error"].text()
    assert dom["active-users"].text() == "3"


# ---- sources, countries, devices and the range picker -----------------------------------

# Known mappings the test relies on: what each sent value must become.
COUNTRY_OF = {"81.2.69.160": "GB", "8.8.8.8": "US", "193.99.144.80": "DE",
              "200.147.67.142": "BR", "133.242.0.1": "JP"}  # fmt: skip
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")  # fmt: skip
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
DEVICE_OF = {DESKTOP_CHROME: "desktop", IPHONE: "mobile", GOOGLEBOT: "bot"}
SITE = "https://shop.example"
# (referrer, page query) -> the source shown; None: no source (direct, or moving in the site)
SOURCE_OF = {
    ("https://www.google.com/search?q=shoes", ""): "Google",
    ("https://news.ycombinator.com/item?id=1", ""): "Hacker News",
    ("https://t.co/x1", ""): "Twitter",
    ("https://blog.friend.example/post", ""): "blog.friend.example",
    ("", "?utm_source=newsletter&utm_medium=email"): "newsletter",
    (f"{SITE}/", ""): None,
    ("", ""): None,
}


@dataclass(frozen=True)
class Visit:
    ip: str
    agent: str
    referrer: str
    query: str
    page: str

    @property
    def visitor(self) -> tuple[str, str]:
        return (self.ip, self.agent)  # the site is one: a visitor is its IP and User-Agent


def visits(n: int) -> list[Visit]:
    rng = random.Random(15)
    out = []
    for _ in range(n):
        referrer, query = rng.choices(list(SOURCE_OF), weights=[7, 5, 3, 2, 4, 3, 6])[0]
        agent = rng.choices(list(DEVICE_OF), weights=[6, 3, 1])[0]
        ip = rng.choices(list(COUNTRY_OF), weights=[8, 6, 3, 2, 1])[0]
        out.append(Visit(ip, agent, referrer, query, rng.choice(["/", "/shoes", "/cart"])))
    return out


def ranked(rows: dict[str | None, list[Visit]]) -> list[tuple[str, int, int]]:
    """The query API's order: events descending, then the value (no value last)."""
    order = sorted(rows.items(), key=lambda kv: (-len(kv[1]), kv[0] is None, kv[0] or ""))
    return [(k or "", len(v), len({x.visitor for x in v})) for k, v in order][:10]


def breakdown_table(dom: Any, table: str) -> list[tuple[str, int, int]]:
    rows = dom[table].all("tbody")[0].all("tr")
    return [(str(r.attrs["data-value"]), int(r.all("td")[1].attrs["data-value"] or -1),
             int(r.all("td")[2].attrs["data-value"] or -1)) for r in rows]  # fmt: skip


@pytest.fixture(scope="module", params=["embedded", "cluster"])
def browser_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A service of its own: its archive holds only this test's page views."""
    yield from _serve(request, tmp_path_factory, "dashsrc")


def send_visits(svc: ServiceProcess, sent: list[Visit]) -> None:
    """As the script tag sends them, from a browser behind the trusted proxy; returns once
    the archive's answers hold every page view sent."""
    for v in sent:
        body = orjson.dumps({"n": "pageview", "u": f"{SITE}{v.page}{v.query}",
                             "d": "shop.example", "r": v.referrer or None})  # fmt: skip
        headers = {"content-type": "text/plain", "user-agent": v.agent, "x-forwarded-for": v.ip}
        reply = HTTP.post(f"{svc.url}/api/event", content=body, headers=headers)
        assert reply.status_code == 202, reply.text
    until = datetime.now(UTC)
    probe = {"date_range": "1h", "metrics": ["events"]}
    deadline = time.monotonic() + 30
    while True:
        meta = HTTP.post(f"{svc.url}/analytics/query", json=probe).json()["meta"]
        if datetime.fromisoformat(meta["archived_until"].replace("Z", "+00:00")) > until:
            return
        assert time.monotonic() < deadline, meta
        time.sleep(0.3)


def assert_breakdowns(dom: Any, sent: list[Visit]) -> None:
    """The page shows no error, and the breakdowns and the total equal the model of
    ``sent``: bots are in none of the numbers (not the live counters', not the
    breakdowns'), only in their own count."""
    assert dom.console == []
    assert dom["error"].attrs.get("hidden") is not None, dom["error"].text()
    assert not [n.attrs.get("id") for n in dom.root.walk() if "stale" in n.classes()]
    people = [v for v in sent if DEVICE_OF[v.agent] != "bot"]
    bots = len(sent) - len(people)
    assert 0 < bots < len(sent)
    by_source: dict[str | None, list[Visit]] = {}
    by_country: dict[str | None, list[Visit]] = {}
    by_device: dict[str | None, list[Visit]] = {}
    for v in people:
        by_source.setdefault(SOURCE_OF[(v.referrer, v.query)], []).append(v)
        by_country.setdefault(COUNTRY_OF[v.ip], []).append(v)
        by_device.setdefault(DEVICE_OF[v.agent], []).append(v)
    assert dom.value("total-count") == len(people)
    assert breakdown_table(dom, "sources") == ranked(by_source)
    assert breakdown_table(dom, "countries") == ranked(by_country)
    assert breakdown_table(dom, "devices") == ranked(by_device)
    assert dom.value("bot-events") == bots


def test_sources_countries_devices_and_the_range_picker(
    browser_service: ServiceProcess, chromium: str, tmp_path: Path
) -> None:
    svc = browser_service
    sent = visits(60)
    send_visits(svc, sent)
    people = [v for v in sent if DEVICE_OF[v.agent] != "bot"]

    for name in ("1h", "24h"):
        query = "" if name == "1h" else f"?range={name}"  # 1 h is the dashboard's default
        dom = render(chromium, tmp_path, f"{svc.url}/dashboard{query}")
        assert_breakdowns(dom, sent)
        # The picker: its buttons (made by range.js), the range in the URL marked.
        buttons = dom["ranges"].all("button")
        assert [b.attrs["data-range"] for b in buttons] == ["1h", "24h", "7d", "30d"]
        assert [b.attrs["data-range"] for b in buttons if "on" in b.classes()] == [name]
        gb = next(r for r in dom["countries"].all("tr") if r.attrs.get("data-value") == "GB")
        assert gb.all("a")[0].text() == "United Kingdom (GB)"
        direct = next(r for r in dom["sources"].all("tr") if r.attrs.get("data-value") == "")
        assert direct.all("a")[0].text() == "Direct / none"
        assert "counted up to" in dom["breakdown-note"].text()
        # The chart's buckets follow the range: 60 minutes, or 24 hours.
        rows = [r for r in dom["chart-data"].all("tr") if "data-start" in r.attrs]
        starts = [datetime.fromisoformat(str(r.attrs["data-start"])) for r in rows]
        step = timedelta(minutes=1) if name == "1h" else timedelta(hours=1)
        assert len(rows) == (60 if name == "1h" else 24)
        assert all(a - b == step for a, b in itertools.pairwise(starts))  # newest first
        assert sum(int(r.all("td")[1].text().replace(",", "")) for r in rows) == len(people)
        assert dom["chart-unit"].text() == ("minute" if name == "1h" else "hour")

    # Explore uses the same picker: the buttons come from the same script.
    dom = render(chromium, tmp_path, f"{svc.url}/dashboard/explore?range=7d")
    buttons = dom["ranges"].all("button")
    assert [b.attrs["data-range"] for b in buttons] == ["1h", "24h", "7d", "30d"]
    assert [b.attrs["data-range"] for b in buttons if "on" in b.classes()] == ["7d"]


# ---- a full archive-query pool ----------------------------------------------------------


@pytest.fixture(scope="module", params=["embedded"])
def one_slot(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One archive query at a time (EA_ANALYTICS_MAX_CONCURRENT=1), as a small deployment
    runs. The pool is the service's, whatever the engine: the embedded one only."""
    yield from _serve(request, tmp_path_factory, "dashbusy", {"EA_ANALYTICS_MAX_CONCURRENT": "1"})


def refused_queries(svc: ServiceProcess) -> float:
    """How many POST /analytics/query the service has answered 503."""
    route = {"method": "POST", "route": "/analytics/query", "status": "503"}
    return value(scrape(svc.url), "ea_http_request_duration_seconds_count", **route)


@contextlib.contextmanager
def slot_taken(svc: ServiceProcess) -> Iterator[Callable[[], None]]:
    """The one query slot taken by someone else's query until the test lets it go (the
    function yielded): a query over an hour whose file is stuck as on a stalled disk, a
    FIFO that no one writes yet, so that the query's thread blocks opening it. Its hour,
    in 2020, is in no range the dashboard reads, and an empty FIFO (size 0) is never
    opened by the archive's status."""
    hour = svc.data_dir / "persistent_events" / "2020/01/01/events_2020-01-01-00.jsonl"
    hour.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(hour)
    held: dict[str, httpx.Response] = {}
    spec = {"date_range": ["2020-01-01T00:00:00Z", "2020-01-01T01:00:00Z"], "metrics": ["events"]}

    def hold() -> None:
        held["reply"] = httpx.post(f"{svc.url}/analytics/query", json=spec, timeout=30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    probe = {"date_range": "1h", "metrics": ["events"]}
    wait_for(lambda: HTTP.post(f"{svc.url}/analytics/query", json=probe).status_code == 503, 10)

    def release() -> None:
        if not hour.exists():
            return
        # Opens only while the query's thread waits in its open (else ENXIO): the slot was
        # held until now. The reader then sees an empty file and reads nothing.
        os.close(os.open(hour, os.O_WRONLY | os.O_NONBLOCK))
        hour.unlink()

    try:
        yield release
    finally:
        release()
        holder.join(timeout=30)
        assert not holder.is_alive()
    assert held["reply"].status_code == 200, held["reply"].text


def test_breakdowns_wait_out_a_full_query_pool(
    one_slot: ServiceProcess, chromium: str, tmp_path: Path
) -> None:
    """Another tab or the Explore page holds the only query slot as the dashboard loads:
    its breakdowns are refused (503 analytics-busy), wait the Retry-After and ask again,
    and fill with the right numbers, no error shown. In real time (``live_page``): under
    ``render``'s virtual time the page's waits would pass before the slot could be let go."""
    svc = one_slot
    sent = visits(60)
    send_visits(svc, sent)
    with live_page(chromium, tmp_path / "profile") as page, slot_taken(svc) as release:
        before = refused_queries(svc)
        page.open(f"{svc.url}/dashboard")
        # The page met the full pool (not a test that passes by never meeting it) ...
        wait_for(lambda: refused_queries(svc) > before, 10)
        release()
        # ... and its first round still ends with every panel filled.
        page.wait_until("Number(document.body.dataset.refreshed || 0) >= 1", 30)
        dom = page.dom()
    assert_breakdowns(dom, sent)
