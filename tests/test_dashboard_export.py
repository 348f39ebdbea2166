"""The site page's export (GET /api/v1/sites/export, static/site-export.js): each CSV of
the zip equals the Stats API's answer to the same view, the totals equal the model, the
page's button downloads the same zip with the read key, and bad input is a 4xx problem."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.browser import live_page
from tests.helpers import HTTP
from tests.servers import ServiceProcess
from tests.test_dashboard_goals import make_goals
from tests.test_dashboard_site import AUTH, READ, SITE, days, expect, settle
from tests.test_dashboard_site import sent as sent  # the fixtures: one service for this module
from tests.test_dashboard_site import svc as svc

pytestmark = pytest.mark.slow

TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"]
# What each file answers, written here apart from the route's plan: (dimension, metrics).
FILES = {
    "top.csv": (None, TOP),
    "visitors.csv": ("time:day", TOP),
    "pages.csv": ("event:page", ["visitors"]),
    "entry_pages.csv": ("visit:entry_page", ["visitors"]),
    "exit_pages.csv": ("visit:exit_page", ["visitors"]),
    "sources.csv": ("visit:source", ["visitors"]),
    "referrers.csv": ("visit:referrer", ["visitors"]),
    "utm_mediums.csv": ("visit:utm_medium", ["visitors"]),
    "utm_sources.csv": ("visit:utm_source", ["visitors"]),
    "utm_campaigns.csv": ("visit:utm_campaign", ["visitors"]),
    "utm_contents.csv": ("visit:utm_content", ["visitors"]),
    "utm_terms.csv": ("visit:utm_term", ["visitors"]),
    "countries.csv": ("visit:country", ["visitors"]),
    "devices.csv": ("visit:device", ["visitors"]),
    "browsers.csv": ("visit:browser", ["visitors"]),
    "operating_systems.csv": ("visit:os", ["visitors"]),
    "conversions.csv": (
        "event:goal", ["visitors", "events", "conversion_rate", "total_revenue"]
    ),
}  # fmt: skip
FILTERS = [["is", "visit:source", ["Google"]]]


def as_cells(v: Any) -> str:
    if v is None:
        return ""
    return str(v["value"] if isinstance(v, dict) else v)


def api_csv(svc: ServiceProcess, name: str, frm: str, to: str) -> list[list[str]]:
    """The file as the Stats API answers its query: header and rows as text."""
    dim, metrics = FILES[name]
    body: dict[str, Any] = {"site_id": SITE, "metrics": metrics, "date_range": [frm, to],
                            "filters": FILTERS}  # fmt: skip
    if dim:
        body["dimensions"] = [dim]
        body["pagination"] = {"limit": 10_000}
    r = HTTP.post(f"{svc.url}/api/v2/query", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    head = [*([dim.split(":", 1)[1]] if dim else []), *metrics]
    rows = [[as_cells(v) for v in (*x["dimensions"], *x["metrics"])] for x in r.json()["results"]]
    return [head, *rows]


def read_zip(data: bytes) -> dict[str, list[list[str]]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {
            n: list(csv.reader(io.StringIO(z.read(n).decode())))
            for n in z.namelist()
            if n.endswith(".csv")
        } | {"README.txt": [[z.read("README.txt").decode()]]}


def test_export_equals_the_api_and_the_button_downloads_it(
    svc: ServiceProcess, sent: list[dict[str, Any]], chromium: str, tmp_path: Path
) -> None:
    make_goals(svc)
    frm, to, _, _ = days()
    params = {"site_id": SITE, "date_range": f"{frm},{to}", "filters": json.dumps(FILTERS)}
    r = HTTP.get(f"{svc.url}/api/v1/sites/export", params=params, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    files = read_zip(r.content)
    assert set(files) == {*FILES, "README.txt"}
    for name in FILES:
        assert files[name] == api_csv(svc, name, frm.isoformat(), to.isoformat()), name
    # The totals are the model's, too (the API is checked against it elsewhere).
    (now,) = expect(sent, frm, to, TOP, filters=FILTERS)
    assert files["top.csv"][1] == [str(v) for v in now["metrics"]]
    assert "Secret-B-Source" not in r.text and "b-secret" not in r.text
    readme = files["README.txt"][0][0]
    assert "sources.csv: 1 rows" in readme and "cut at" not in readme

    # The page's button: the same zip, fetched with the read key (a header).
    url = f"{svc.url}/dashboard/{SITE}?range=custom&from={frm}&to={to}&f=is|visit:source|Google"
    with live_page(chromium, tmp_path / "profile") as page:
        page.open(f"{url}#key={READ}")
        settle(page, 1)
        page.evaluate(
            """(() => {
              window.__zip = null;
              const make = URL.createObjectURL;
              URL.createObjectURL = (blob) => {
                const reader = new FileReader();
                reader.onload = () => { window.__zip = reader.result.split(',')[1]; };
                reader.readAsDataURL(blob);
                return make(blob);
              };
              document.getElementById('export').click();
            })()"""
        )
        page.wait_until("window.__zip !== null", 60)
        downloaded = read_zip(base64.b64decode(page.evaluate("window.__zip")))
        assert page.console() == []
    assert {n: v for n, v in downloaded.items() if n != "README.txt"} == {
        n: v for n, v in files.items() if n != "README.txt"
    }


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"filters": "not json"}, 400, "filters"),
        ({"filters": '{"a": 1}'}, 400, "filters"),
        ({"filters": '[["is", "visit:nope", ["x"]]]'}, 400, None),
        ({"interval": "minute"}, 400, "interval"),
        ({"date_range": "yesterday-ish"}, 400, "date_range"),
        ({"site_id": "not a domain"}, 422, "site_id"),
    ],
)
def test_export_bad_input_is_a_problem(
    svc: ServiceProcess, params: dict[str, str], status: int, field: str | None
) -> None:
    r = HTTP.get(f"{svc.url}/api/v1/sites/export", params={"site_id": SITE, **params},
                 headers=AUTH)  # fmt: skip
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    if field:
        assert problem["errors"][0]["field"] == field
    assert "{" not in problem["detail"] or "[[" in problem["detail"]
    # Without the read key: refused.
    assert HTTP.get(f"{svc.url}/api/v1/sites/export", params={"site_id": SITE}).status_code == 401


def test_cli_writes_the_same_zip(
    svc: ServiceProcess, sent: list[dict[str, Any]], tmp_path: Path
) -> None:
    """``event-analytics stats-export`` on the service's data dir: the same CSV files as
    the route for the same view (the goals read from the running service's engine)."""
    make_goals(svc)
    frm, to, _, _ = days()
    params = {"site_id": SITE, "date_range": f"{frm},{to}", "filters": json.dumps(FILTERS)}
    r = HTTP.get(f"{svc.url}/api/v1/sites/export", params=params, headers=AUTH)
    assert r.status_code == 200, r.text
    out = tmp_path / "view.zip"
    done = subprocess.run(
        [sys.executable, "-m", "event_analytics", "stats-export", "--data-dir",
         str(svc.data_dir), "--site", SITE, "--range", f"{frm},{to}",
         "--filter", json.dumps(FILTERS[0]), "--output", str(out)],
        capture_output=True, text=True, timeout=300, env=svc.env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got, want = read_zip(out.read_bytes()), read_zip(r.content)
    assert set(got) == set(want) == {*FILES, "README.txt"}
    assert {n: v for n, v in got.items() if n != "README.txt"} == {
        n: v for n, v in want.items() if n != "README.txt"
    }
