"""The script tag and Plausible's events API, in headless Chromium against the real
service. Each test page is served by the test on another origin than the service (so
CORS is exercised), and reports to its own site when it has done everything."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.backends import own_engine_env
from tests.clients import DESKTOP_CHROME, Site, browsing, node_clients
from tests.helpers import HTTP, event, wait_for
from tests.inproc import InProcessService
from tests.readback import archived, total
from tests.servers import ServiceProcess, stopped_after

pytestmark = pytest.mark.slow

SCRIPT_PAGE = """<!doctype html><html><head><title>shop</title>
<script>
window.ea = window.ea || function () {{ (window.ea.q = window.ea.q || []).push(arguments) }};
ea('early', {{props: {{queued: true}}}});  // before the script loaded: queued, then sent</script>
<script defer data-domain="{domain}" {allow} src="{service}/js/script.js"></script>
</head><body><script>
function step(f, ms) {{ return new Promise(r => setTimeout(() => {{ f(); r(); }}, ms)); }}
window.addEventListener('load', async () => {{
  const pricing = '/pricing?utm_source=news&utm_campaign=launch';
  await step(() => history.pushState({{}}, '', pricing), 300);
  await step(() => history.pushState({{}}, '', pricing), 300);
  let status = 'none';
  await new Promise(r => setTimeout(() => {{
    if (!window.ea.q) ea('Signup', {{props: {{plan: 'pro', seats: 3}}, callback: (res) => {{
      status = res && res.status; r(); }}}}); else r();
  }}, 300));
  await step(() => history.go(-2), 300);  // popstate: a view of the first page again
  await step(() => fetch('/done?status=' + status), 500);
}});
</script></body></html>"""

TRACKER_PAGE = """<!doctype html><html><head><title>npm</title></head><body>
<script type="module">
import {{ init, track }} from '/plausible.js';
init({{ domain: '{domain}', endpoint: '{service}/api/event', captureOnLocalhost: true,
        autoCapturePageviews: true, logging: false }});
setTimeout(() => history.pushState({{}}, '', '/docs'), 300);
setTimeout(() => track('Purchase', {{ props: {{ tier: 'startup' }},
  revenue: {{ amount: 15.99, currency: 'USD' }},
  callback: (res) => fetch('/done?status=' + (res && res.status)) }}), 800);
</script></body></html>"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "site"
    root.mkdir()
    with Site(root) as s:
        yield s


def _records(svc: ServiceProcess, domain: str) -> list[dict[str, Any]]:
    mine = [r for r in archived(svc.data_dir) if r["payload"].get("domain") == domain]
    return sorted(mine, key=lambda r: str(r["timestamp"]))


def test_script_tag_counts_exactly_what_the_page_did(
    live: ServiceProcess, site: Site, tmp_path: Path
) -> None:
    domain = f"shop-{uuid.uuid4().hex[:8]}.example"
    page = SCRIPT_PAGE.format(domain=domain, allow="data-allow-localhost", service=live.url)
    (site.root / "index.html").write_text(page)
    since = datetime.now(UTC)
    with browsing(f"{site.url}/index.html", tmp_path / "profile"):
        site.wait_done()
        # The custom event's answer was readable by the page: CORS let it through.
        assert site.done[0]["status"] == ["202"]
        # Views: the page, /pricing (pushed twice: one view), the page again (two back).
        wait_for(lambda: len(_records(live, domain)) >= 5, on_fail=lambda: _records(live, domain))
    records = _records(live, domain)
    views = [r for r in records if r["event_type"] == "page_view"]
    assert [v["payload"]["page_url"] for v in views] == [
        f"{site.url}/index.html",
        f"{site.url}/pricing?utm_source=news&utm_campaign=launch",
        f"{site.url}/index.html",
    ]
    assert views[1]["payload"]["utm_source"] == views[1]["payload"]["source"] == "news"
    assert views[1]["payload"]["utm_campaign"] == "launch"
    signup = [r for r in records if r["event_type"] == "signup"]
    assert len(signup) == 1
    assert signup[0]["payload"] == {
        "page_url": f"{site.url}/pricing?utm_source=news&utm_campaign=launch",
        "domain": domain,
        "event_name": "Signup",
        "plan": "pro",
        "seats": 3,
        "utm_source": "news",
        "utm_campaign": "launch",
        "source": "news",
        "browser": "Chrome",
        "os": "Linux",
        "device": "desktop",
    }
    early = [r for r in records if r["event_type"] == "early"]
    assert len(early) == 1 and early[0]["payload"]["queued"] is True
    assert len(records) == 5, records  # nothing else was sent
    # One visitor (same site, address and browser today): one user on every record.
    assert len({r["user_id"] for r in records}) == 1
    assert "127.0.0.1" not in str([r["user_id"] for r in records])
    assert total(live, "page_view", since) == 3
    assert total(live, "signup", since) == 1


def test_nothing_is_sent_from_localhost_unless_asked(
    live: ServiceProcess, site: Site, tmp_path: Path
) -> None:
    domain = f"quiet-{uuid.uuid4().hex[:8]}.example"
    page = SCRIPT_PAGE.format(domain=domain, allow="", service=live.url)
    (site.root / "index.html").write_text(page)
    since = datetime.now(UTC)
    with browsing(f"{site.url}/index.html", tmp_path / "profile"):
        site.wait_done()
    assert site.done[0]["status"] == ["undefined"]  # the callback heard: not sent
    assert (total(live, "page_view", since), total(live, "signup", since)) == (0, 0)
    assert not _records(live, domain)


def test_plausibles_own_npm_tracker_against_api_event(
    live: ServiceProcess, site: Site, tmp_path: Path
) -> None:
    modules = node_clients()
    tracker = modules / "@plausible-analytics" / "tracker" / "plausible.js"
    (site.root / "plausible.js").write_bytes(tracker.read_bytes())
    domain = f"npm-{uuid.uuid4().hex[:8]}.example"
    (site.root / "index.html").write_text(TRACKER_PAGE.format(domain=domain, service=live.url))
    with browsing(f"{site.url}/index.html", tmp_path / "profile"):
        site.wait_done()
        assert site.done[0]["status"] == ["202"]
        wait_for(
            lambda: len([r for r in _records(live, domain) if r["event_type"] != "engagement"]) >= 3
        )
    records = [r for r in _records(live, domain) if r["event_type"] != "engagement"]
    views = [r["payload"]["page_url"] for r in records if r["event_type"] == "page_view"]
    assert views == [f"{site.url}/index.html", f"{site.url}/docs"]
    (purchase,) = [r for r in records if r["event_type"] == "purchase"]
    assert purchase["payload"]["tier"] == "startup"
    assert purchase["payload"]["revenue_amount"] == "15.99"  # exact decimal text
    assert purchase["payload"]["revenue_currency"] == "USD"
    assert len(records) == 3


def test_api_event_answers(api: InProcessService) -> None:
    ok = api.http.post(
        f"{api.url}/api/event",
        content=b'{"n":"pageview","u":"https://a.example/","d":"a.example"}',
        headers={"content-type": "text/plain", "origin": "https://a.example"},
    )
    assert (
        ok.status_code == 202 and ok.headers["access-control-allow-origin"] == "https://a.example"
    )
    missing = api.http.post(f"{api.url}/api/event", json={"n": "pageview", "d": "a.example"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "url"
    bad = api.http.post(
        f"{api.url}/api/event", content=b"{", headers={"content-type": "text/plain"}
    )
    assert bad.status_code == 400
    preflight = api.http.options(
        f"{api.url}/api/event",
        headers={"origin": "https://a.example", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 204
    script = api.http.get(f"{api.url}/js/script.js")
    assert script.status_code == 200 and "sendBeacon" in script.text
    assert script.headers["content-type"].startswith("application/javascript")


@pytest.fixture(params=["embedded", "cluster"])
def logged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceProcess]:
    env = own_engine_env(request, "iplog:") | {"EA_ACCESS_LOG": "1"}
    with stopped_after(ServiceProcess(tmp_path / "data", env)) as svc:
        yield svc


def test_the_client_ip_is_never_logged_stored_or_archived(logged: ServiceProcess) -> None:
    ip = "81.2.69.160"  # a GB address, forwarded by the (trusted, local) proxy
    headers = {"content-type": "text/plain", "x-forwarded-for": ip, "user-agent": DESKTOP_CHROME}
    body = b'{"n":"pageview","u":"https://ip.example/","d":"ip.example"}'
    reply = HTTP.post(f"{logged.url}/api/event", content=body, headers=headers)
    assert reply.status_code == 202, reply.text
    event_id = reply.json()["event_id"]
    wait_for(lambda: any(r["event_id"] == event_id for r in archived(logged.data_dir)))
    (record,) = [r for r in archived(logged.data_dir) if r["event_id"] == event_id]
    assert record["payload"]["country"] == "GB"  # the forwarded address was the one used
    native = HTTP.post(f"{logged.url}/events", json=event(), headers={"x-forwarded-for": ip})
    assert native.status_code == 201

    def whole_log() -> str:
        # The access log line is written after the answer went out: wait for it, and read
        # the whole file (output() keeps only its tail).
        return logged.log_path.read_text(errors="replace")

    wait_for(lambda: any('"/events"' in line for line in whole_log().splitlines()))
    log = whole_log()
    assert '"route": "/api/event"' in log or '"route":"/api/event"' in log
    # The native route logs its client address; the browser path never does.
    lines = [line for line in log.splitlines() if "/api/event" in line]
    assert lines and not any(ip in line for line in lines)
    assert any(ip in line for line in log.splitlines() if '"/events"' in line)
    assert ip not in str(archived(logged.data_dir))


def test_storage_down_is_503_with_retry_after(engine_down: ServiceProcess) -> None:
    batch = {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": "m"}]}
    seg = HTTP.post(f"{engine_down.url}/v1/batch", json=batch)
    assert seg.status_code == 503 and int(seg.headers["retry-after"]) >= 1, seg.text
    body = b'{"n":"pageview","u":"https://a.example/","d":"a.example"}'
    pl = HTTP.post(
        f"{engine_down.url}/api/event", content=body, headers={"content-type": "text/plain"}
    )
    assert pl.status_code == 503 and int(pl.headers["retry-after"]) >= 1, pl.text
    assert pl.headers["content-type"] == "application/problem+json"
