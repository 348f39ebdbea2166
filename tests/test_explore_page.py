"""GET /dashboard/explore as a person sees it: headless Chromium runs the funnel and the
retention heat map against the real service; every number shown is compared with the
model of the events sent."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import analytics_model as model
from tests.browser import render
from tests.helpers import HTTP, event
from tests.servers import ServiceProcess, stopped_after

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service as `make run` starts it (embedded Valkey, archiver on), with one archive
    query at a time: the page must not lose a part to the 503 its own queries would cause
    if it sent them together (they used to go at once, and one success hid the other's
    error)."""
    env = {"EA_ANALYTICS_MAX_CONCURRENT": "1"}
    with stopped_after(ServiceProcess(tmp_path_factory.mktemp("explore") / "data", env)) as svc:
        yield svc


def _traffic(now: datetime) -> list[dict[str, Any]]:
    events = []
    base = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    for u in range(9):
        user = f"x{u}"
        t = base + timedelta(minutes=7 * u)
        events.append(event(user=user, ts=t, event_type="view", url="https://e.example/pricing"))
        if u % 3 != 2:
            events.append(event(user=user, ts=t + timedelta(minutes=3 + u), event_type="join",
                                url=None))  # fmt: skip
        if u % 3 == 0:
            events.append(event(user=user, ts=t + timedelta(hours=1 + u % 2), event_type="view",
                                url="https://e.example/"))  # fmt: skip
    return events


def _records(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for b in bodies:
        ts = datetime.fromisoformat(b["timestamp"]).astimezone(UTC).isoformat()
        out.append({**b, "timestamp": ts, "received_at": ts, "event_id": str(uuid.uuid4())})
    return out


def test_explore_shows_the_funnel_and_the_heat_map(
    service: ServiceProcess,
    chromium: str,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    bodies = _traffic(now)
    reply = HTTP.post(f"{service.url}/events/batch", json={"events": bodies})
    assert reply.status_code == 200 and reply.json()["accepted"] == len(bodies), reply.text
    sent = datetime.now(UTC)
    deadline = time.monotonic() + 30
    probe = {"date_range": "1h", "metrics": ["events"]}
    while True:  # until every event sent is in the archive's answers
        meta = HTTP.post(f"{service.url}/analytics/query", json=probe).json()["meta"]
        if datetime.fromisoformat(meta["archived_until"].replace("Z", "+00:00")) > sent:
            break
        assert time.monotonic() < deadline, meta
        time.sleep(0.3)
    records = _records(bodies)

    url = (f"{service.url}/dashboard/explore?range=24h&steps=view,join&window=3600"
           "&cohort=join&return=view&period=hour")  # fmt: skip
    dom = render(chromium, tmp_path, url)
    assert dom.console == []
    assert dom["error"].attrs.get("hidden") is not None, dom["error"].text()

    rows = [n for n in dom["funnel-chart"].walk() if "bar-row" in n.classes()]
    shown = [int(r.attrs["data-users"] or -1) for r in rows]
    steps = [{"event_type": "view"}, {"event_type": "join"}]
    spec = {"from": (now - timedelta(hours=24)).isoformat(), "to": now.isoformat(),
            "steps": steps, "window_s": 3600}  # fmt: skip
    want = model.funnel(records, spec)
    assert shown == [s["users"] for s in want["steps"]] == [9, 6]
    median = next(n for n in rows[1].walk() if "median" in n.classes())
    assert float(median.attrs["data-value"] or -1) == want["steps"][1]["median_s_from_previous"]

    cohorts = dom["retention"].all("tbody")[0].all("tr")
    assert cohorts, "no cohort rows"
    starts = [datetime.fromisoformat(str(r.attrs["data-start"]).replace("Z", "+00:00"))
              for r in cohorts]  # fmt: skip
    r_spec = {"from": starts[0].isoformat(), "to": (starts[-1] + timedelta(hours=1)).isoformat(),
              "period": "hour", "periods": 24, "cohort_event": {"event_type": "join"},
              "return_event": {"event_type": "view"}}  # fmt: skip
    want_r = model.retention(records, r_spec, now)
    for row, expected in zip(cohorts, want_r["cohorts"], strict=True):
        cells = [n for n in row.all("td") if "cell" in n.classes()]
        assert [int(c.attrs["data-value"] or -1) for c in cells] == expected["values"][1:]
    assert sum(int(r.all("td")[1].attrs["data-value"] or 0) for r in cohorts) == 6


READ_KEY = "explore-read-key-0123456789"


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service with its read scope closed (EA_READ_KEYS)."""
    env = {"EA_READ_KEYS": READ_KEY}
    with stopped_after(ServiceProcess(tmp_path_factory.mktemp("keyed") / "data", env)) as svc:
        yield svc


def test_both_pages_load_without_a_key_and_read_with_one(
    keyed_service: ServiceProcess, chromium: str, tmp_path: Path
) -> None:
    """Issue 21, item 2: /dashboard/explore answered 401 once EA_READ_KEYS was set, so the
    page that reads its key from the URL fragment could not even load. Both pages are
    public; their data is not, and each page sends the key given in its fragment."""
    url = keyed_service.url
    for page in ("/dashboard", "/dashboard/explore"):
        got = HTTP.get(f"{url}{page}")
        assert got.status_code == 200, (page, got.status_code, got.text[:200])
        assert got.headers["content-type"].startswith("text/html"), page
    assert HTTP.post(f"{url}/analytics/funnel", json={}).status_code == 401  # the data: not

    now = datetime.now(UTC)
    bodies = _traffic(now)
    reply = HTTP.post(f"{url}/events/batch", json={"events": bodies})
    assert reply.status_code == 200 and reply.json()["accepted"] == len(bodies), reply.text
    sent = datetime.now(UTC)
    deadline = time.monotonic() + 30
    probe = {"date_range": "1h", "metrics": ["events"]}
    while True:  # until every event sent is in the archive's answers
        got = HTTP.post(f"{url}/analytics/query", json=probe, headers={"X-API-Key": READ_KEY})
        meta = got.json()["meta"]
        if datetime.fromisoformat(meta["archived_until"].replace("Z", "+00:00")) > sent:
            break
        assert time.monotonic() < deadline, meta
        time.sleep(0.3)

    explore = f"{url}/dashboard/explore?range=24h&steps=view,join&window=3600"
    # Without the key: the page loads, every answer is refused, and it says what to do.
    (tmp_path / "no-key").mkdir()
    dom = render(chromium, tmp_path / "no-key", explore)
    banner = dom["error"]
    assert banner.attrs.get("hidden") is None and "needs a read key" in banner.text(), banner.text()
    assert [n for n in dom["funnel-chart"].walk() if "bar-row" in n.classes()] == []
    # With it, in the fragment: the funnel of the events sent.
    (tmp_path / "key").mkdir()
    dom = render(chromium, tmp_path / "key", f"{explore}#key={READ_KEY}")
    assert dom["error"].attrs.get("hidden") is not None, dom["error"].text()
    rows = [n for n in dom["funnel-chart"].walk() if "bar-row" in n.classes()]
    assert [int(r.attrs["data-users"] or -1) for r in rows] == [9, 6]
    # And the live dashboard on the same service, with the key in its fragment.
    (tmp_path / "dashboard").mkdir()
    dom = render(chromium, tmp_path / "dashboard", f"{url}/dashboard#key={READ_KEY}")
    assert dom["error"].attrs.get("hidden") is not None, dom["error"].text()
