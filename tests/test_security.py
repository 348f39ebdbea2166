"""API keys with scopes, rate limits shared by the workers, browser origins, beacons.

Scopes, refusals, CORS, the OpenAPI, per-key and event limits, the beacon and the request
id are the app's: they run on the keyed app in this process (tests.inproc), on each
engine, the cluster's included (the rate-limit counters live in the engine). What needs
processes stays on service processes, marked slow: the keyed service of two workers (one
address's limit shared by both, the CLI reaching it over a socket) and a read-keyed
service whose archiver writes the files /persistent shows. Each test uses its own client
addresses (X-Forwarded-For, trusted from loopback) and keys, so the rate-limit counters
of one test never touch another's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import ValidationError

from event_analytics.api.security import fingerprint
from event_analytics.config import Settings
from event_analytics.keys import Keys
from event_analytics.store.ratelimit import digest
from tests.backends import Backend
from tests.helpers import HTTP, event
from tests.inproc import InProcessService, Service, in_process
from tests.servers import ServiceProcess

WRITE = "write-key-aaaaaaaaaaaaaaaa"
WRITE_LIMITED = "write-key-limited-bbbbbbbb"
WRITE_OTHER = "write-key-other-cccccccccc"
READ = "read-key-dddddddddddddddddd"
BOTH = "both-scopes-eeeeeeeeeeeeeeee"
ORIGIN = "https://shop.example"
PER_KEY = 20
PER_ADDRESS = 5
WINDOW_S = 3600
JSON = {"content-type": "application/json"}


KEYED_ENV = {
    "EA_WRITE_KEYS": f"{WRITE},{WRITE_LIMITED}, {WRITE_OTHER},{BOTH}",
    "EA_READ_KEYS": f"{READ},{BOTH}",
    "EA_RATE_LIMIT_PER_KEY": str(PER_KEY),
    "EA_RATE_LIMIT_PER_ADDRESS": str(PER_ADDRESS),
    "EA_RATE_LIMIT_WINDOW_S": str(WINDOW_S),
    "EA_CORS_ORIGINS": ORIGIN,
}


@pytest.fixture(scope="module")
def keyed(engine: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The keyed service, two worker processes: for what needs processes (marked slow)."""
    env = engine.env | KEYED_ENV
    svc = ServiceProcess(tmp_path_factory.mktemp("keyed") / "data", env=env, workers=2)
    svc.start()
    yield svc.url
    svc.stop()


@pytest.fixture(scope="module")
def keyed_app(
    engine: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The same keys, limits and origins on the app in this process (``keyed``'s twin).

    On the engine's own prefix, as ``keyed``, with no archiver (``app_service``'s rule).
    """
    settings = engine.settings(
        data_dir=tmp_path_factory.mktemp("keyed-app") / "data",
        key_prefix=engine.prefix,
        write_keys=KEYED_ENV["EA_WRITE_KEYS"],
        read_keys=KEYED_ENV["EA_READ_KEYS"],
        rate_limit_per_key=PER_KEY,
        rate_limit_per_address=PER_ADDRESS,
        rate_limit_window_s=WINDOW_S,
        cors_origins=ORIGIN,
    )
    with in_process(settings, engine.env | KEYED_ENV) as svc:
        yield svc


# The three documentation ranges: never contacted, and enough for every engine's run.
_address = iter(
    f"{net}.{host}" for net in ("192.0.2", "198.51.100", "203.0.113") for host in range(1, 255)
)


def address() -> dict[str, str]:
    """A client address of its own."""
    return {"x-forwarded-for": next(_address)}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **address()}


def problem_type(r: httpx.Response) -> str:
    assert r.headers["content-type"] == "application/problem+json", r.text
    slug: str = r.json()["type"].rsplit(":", 1)[1]
    return slug


def test_write_scope(keyed_app: InProcessService) -> None:
    url, http = keyed_app.url, keyed_app.http
    body = event()
    r = http.post(f"{url}/events", json=body, headers=address())
    assert r.status_code == 401 and problem_type(r) == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = http.post(f"{url}/events", json=body, headers=bearer("not-a-key-not-a-key-000"))
    assert r.status_code == 401
    # Basic auth is not a key.
    basic = {"authorization": f"Basic {WRITE}", **address()}
    assert http.post(f"{url}/events", json=body, headers=basic).status_code == 401
    r = http.post(f"{url}/events", json=body, headers=bearer(READ))
    assert r.status_code == 403 and problem_type(r) == "forbidden"
    assert "insufficient_scope" in r.headers["www-authenticate"]
    # Nothing refused was stored: the first accepted send is new.
    assert http.post(f"{url}/events", json=body, headers=bearer(WRITE)).status_code == 201
    lower = {"authorization": f"bearer {BOTH}", **address()}
    assert http.post(f"{url}/events", json=event(), headers=lower).status_code == 201
    x_key = {"x-api-key": WRITE_OTHER, **address()}
    r = http.post(f"{url}/events/batch", json={"events": [event()]}, headers=x_key)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = http.post(f"{url}/events/batch", json={"events": [event()]}, headers=address())
    assert r.status_code == 401


@pytest.mark.parametrize(
    "path",
    ["/analytics/realtime", "/analytics/page_views_per_minute", "/analytics/timeseries",
     "/analytics/top-pages", "/analytics/minute-buckets/page_view_2026-01-01_00:00",
     "/persistent/status", "/persistent/files", "/metrics", "/no-such-route"],
)  # fmt: skip
def test_read_scope(keyed_app: InProcessService, path: str) -> None:
    url, http = keyed_app.url, keyed_app.http
    r = http.get(f"{url}{path}", headers=address())
    assert r.status_code == 401 and problem_type(r) == "unauthorized"
    assert http.get(f"{url}{path}", headers=bearer(WRITE)).status_code == 403
    expected = 404 if path == "/no-such-route" else 200
    assert http.get(f"{url}{path}", headers=bearer(READ)).status_code == expected
    assert (
        http.get(f"{url}{path}", headers={"x-api-key": BOTH, **address()}).status_code == expected
    )


def _absolute_paths(value: object) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


@pytest.fixture(scope="module")
def read_keyed(engine: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Read keys only, no rate limits (its test polls)."""
    env = engine.env | {"EA_READ_KEYS": READ, "EA_KEY_PREFIX": "readkeyed:"}
    svc = ServiceProcess(tmp_path_factory.mktemp("read-keyed") / "data", env=env)
    svc.start()
    yield svc.url
    svc.stop()


@pytest.mark.slow  # a keyed service process
def test_read_keys_see_no_archive_path_nor_pids(read_keyed: str, live: ServiceProcess) -> None:
    """Issue 21, item 7: with EA_READ_KEYS set, /persistent/status and /persistent/files
    show a read-key holder the figures and the files' relative paths, not the archive's
    absolute path nor the archivers' pids. Without keys (the operator's own service) they
    are there."""
    assert HTTP.post(f"{read_keyed}/events", json=event()).status_code == 201
    read = {"x-api-key": READ}
    deadline = time.monotonic() + 30
    while True:  # an archiver has written a file and said so in a heartbeat
        status = HTTP.get(f"{read_keyed}/persistent/status", headers=read).json()
        if status["archivers"] and status["stats"]["files_count"]:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    files = HTTP.get(f"{read_keyed}/persistent/files", headers=read).json()
    assert "archive_dir" not in status and "directory" not in files, (status, files)
    assert all("pid" not in a and a["name"] for a in status["archivers"]), status
    assert _absolute_paths(status) == _absolute_paths(files) == []
    assert files["files"] and all(f["path"].endswith(".jsonl") for f in files["files"])
    # The operator's service, no keys: both shown.
    open_status = HTTP.get(f"{live.url}/persistent/status").json()
    assert open_status["archive_dir"].startswith("/"), open_status
    assert all(isinstance(a["pid"], int) for a in open_status["archivers"]), open_status
    assert HTTP.get(f"{live.url}/persistent/files").json()["directory"].startswith("/")


def test_probes_and_docs_stay_public_and_say_so(
    keyed_app: InProcessService, api: InProcessService
) -> None:
    url, http = keyed_app.url, keyed_app.http
    for path in ("/health/", "/health/ready", "/openapi.json", "/docs"):
        assert http.get(f"{url}{path}").status_code == 200, path
    access = http.get(f"{url}/health/ready").json()["access"]
    assert (access["write"], access["read"]) == ("api_key", "api_key")
    assert "warning" not in access
    assert access["rate_limits"] == {"per_key": 20, "per_address": 5, "events_per_key": None,
                                     "events_per_address": None, "window_s": 3600}  # fmt: skip
    # The default service: open, and readiness says it plainly.
    access = api.http.get(f"{api.url}/health/ready").json()["access"]
    assert (access["write"], access["read"]) == ("open", "open")
    assert "anyone" in access["warning"]


# The schema does not depend on the engine.
@pytest.mark.parametrize("engine", ["valkey"], indirect=True)
def test_openapi_documents_keys_and_refusals(keyed_app: InProcessService) -> None:
    url, http = keyed_app.url, keyed_app.http
    schema = http.get(f"{url}/openapi.json").json()
    assert {"bearer", "apiKey"} <= schema["components"]["securitySchemes"].keys()
    for path in ("/events", "/events/batch"):  # both ingest routes take the write scope
        post = schema["paths"][path]["post"]
        assert {"401", "403", "408", "429"} <= post["responses"].keys() and post["security"]
    get = schema["paths"]["/analytics/realtime"]["get"]
    assert {"401", "403", "429"} <= get["responses"].keys() and get["security"]
    assert "security" not in schema["paths"]["/health/ready"]["get"]


def _fresh_window() -> None:
    # The counters are per clock-aligned window: do not start a count just before one ends.
    left = WINDOW_S - time.time() % WINDOW_S
    if left < 30:
        time.sleep(left + 0.5)


@pytest.mark.slow  # a keyed service process
def test_rate_limit_per_address_is_shared_by_workers(keyed: str, engine: Backend) -> None:
    _fresh_window()
    client_address = address()
    statuses = []
    for _ in range(PER_ADDRESS + 4):
        # A new connection each time: the kernel spreads them over both workers.
        r = httpx.post(
            f"{keyed}/events", json=event(), headers={**bearer(WRITE_OTHER), **client_address}
        )
        statuses.append(r.status_code)
    assert statuses.count(201) == PER_ADDRESS and statuses[PER_ADDRESS:] == [429] * 4
    r = httpx.post(f"{keyed}/events", json=event(), headers={**bearer(WRITE), **client_address})
    assert r.status_code == 429 and problem_type(r) == "rate-limited"
    assert 1 <= int(r.headers["retry-after"]) <= WINDOW_S
    # Guessing keys counts too; reads share the address's budget.
    assert HTTP.get(f"{keyed}/analytics/realtime", headers=client_address).status_code == 429
    # One counter in the engine for all workers, named by a hash of the address.
    client = engine.client()
    window = int(time.time() // WINDOW_S)
    name = Keys().rate("address", digest(client_address["x-forwarded-for"]), window)
    assert int(client.get(name) or 0) == PER_ADDRESS + 6
    assert 0 < client.ttl(name) <= 2 * WINDOW_S
    client.close()
    # Another address is not affected.
    assert HTTP.post(f"{keyed}/events", json=event(), headers=bearer(WRITE)).status_code == 201


def test_rate_limit_per_key(keyed_app: InProcessService, engine: Backend) -> None:
    url, http = keyed_app.url, keyed_app.http
    _fresh_window()
    statuses = [
        http.post(f"{url}/events", json=event(), headers=bearer(WRITE_LIMITED)).status_code
        for _ in range(PER_KEY + 2)
    ]
    assert statuses == [201] * PER_KEY + [429] * 2
    r = http.post(f"{url}/events", json=event(), headers=bearer(WRITE_LIMITED))
    assert "API key" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
    # The counter's name holds a fingerprint of the key, never the key.
    names = engine.scan("ea:rl:*")
    assert any(fingerprint(WRITE_LIMITED) in n for n in names)
    assert not any(WRITE_LIMITED in n or WRITE in n for n in names)


def test_cors_for_ingest_only(keyed_app: InProcessService) -> None:
    url, http = keyed_app.url, keyed_app.http
    preflight = {"origin": ORIGIN, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}  # fmt: skip
    r = http.options(f"{url}/events", headers=preflight)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"]
    assert "POST" in r.headers["access-control-allow-methods"]
    evil = {**preflight, "origin": "https://evil.example"}
    r = http.options(f"{url}/events/batch", headers=evil)
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    # A simple request from the allowed origin can read its answer...
    r = http.post(
        f"{url}/events", content=orjson.dumps(event()),
        headers={**bearer(WRITE), "origin": ORIGIN, "content-type": "text/plain"},
    )  # fmt: skip
    assert r.status_code == 201 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"]
    # ... one from another origin is refused, not only hidden by the browser.
    r = http.post(
        f"{url}/events", json=event(), headers={**bearer(WRITE), "origin": "https://evil.example"}
    )
    assert r.status_code == 403 and problem_type(r) == "origin-not-allowed"
    # Reads: no CORS unless EA_CORS_READ_ORIGINS.
    r = http.get(f"{url}/analytics/realtime", headers={**bearer(READ), "origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_beacon_text_plain_accepted(api: InProcessService) -> None:
    # navigator.sendBeacon(url, JSON.stringify(event)) sends text/plain;charset=UTF-8.
    beacon = {"content-type": "text/plain;charset=UTF-8"}
    body = event()
    r = api.http.post(f"{api.url}/events", content=orjson.dumps(body), headers=beacon)
    assert r.status_code == 201, r.text
    r = api.http.post(f"{api.url}/events", content=orjson.dumps(body), headers=beacon)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    batch = orjson.dumps({"events": [event(), event()]})
    r = api.http.post(f"{api.url}/events/batch", content=batch, headers=beacon)
    assert r.status_code == 200 and r.json()["accepted"] == 2
    r = api.http.post(f"{api.url}/events", content=b"{", headers=beacon)
    assert r.status_code == 400
    r = api.http.post(f"{api.url}/events", content=orjson.dumps(event()),
                      headers={"content-type": "text/html"})  # fmt: skip
    assert r.status_code == 415


def test_request_id_echoed_or_made(api: InProcessService) -> None:
    r = api.http.get(f"{api.url}/health/", headers={"x-request-id": "trace-42.a:b"})
    assert r.headers["x-request-id"] == "trace-42.a:b"
    made = api.http.post(f"{api.url}/events", content=b"{", headers=JSON).headers["x-request-id"]
    other = api.http.post(f"{api.url}/events", content=b"{", headers=JSON).headers["x-request-id"]
    assert made != other and len(made) == 16
    # Something that could break a log line or a header is replaced, not echoed.
    r = api.http.get(f"{api.url}/health/", headers={"x-request-id": 'a b"c' + "x" * 200})
    assert r.headers["x-request-id"] != 'a b"c' + "x" * 200 and len(r.headers["x-request-id"]) == 16


def test_keys_must_be_long(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="16 or more"):
        Settings(write_keys="short")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="origin"):
        Settings(cors_origins="shop.example")  # type: ignore[arg-type]
    ok = Settings(write_keys=" a-long-enough-key-123 ,, ", cors_origins="*")  # type: ignore[arg-type]
    assert ok.write_keys == ("a-long-enough-key-123",) and ok.cors_origins == ("*",)


@pytest.mark.slow  # a keyed service process
def test_cli_status_sends_ea_api_key(keyed: str) -> None:
    def status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "event_analytics", "status", "--url", keyed, "--minutes", "2"],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if k != "EA_API_KEY"} | env,
        )  # fmt: skip

    without = status({})
    with_key = status({"EA_API_KEY": BOTH})
    assert "401" in without.stdout + without.stderr
    assert with_key.returncode == 0, with_key.stdout + with_key.stderr
    assert "401" not in with_key.stdout + with_key.stderr


@pytest.mark.parametrize(
    ("path", "body"),
    [("/analytics/funnel", {"from": "2026-11-28T00:00:00Z", "to": "2026-11-29T00:00:00Z",
                            "steps": [{"event_type": "a"}, {"event_type": "b"}]}),
     ("/analytics/retention", {"from": "2026-11-28T00:00:00Z", "to": "2026-11-29T00:00:00Z",
                               "cohort_event": {"event_type": "a"},
                               "return_event": {"event_type": "b"}}),
     ("/analytics/query", {"date_range": "24h", "metrics": ["events"]})],
)  # fmt: skip
def test_archive_analytics_need_the_read_scope(
    keyed_app: InProcessService, path: str, body: dict
) -> None:
    url, http = keyed_app.url, keyed_app.http
    r = http.post(f"{url}{path}", json=body, headers=address())
    assert r.status_code == 401 and problem_type(r) == "unauthorized"
    assert http.post(f"{url}{path}", json=body, headers=bearer(WRITE)).status_code == 403
    r = http.post(f"{url}{path}", json=body, headers=bearer(READ))
    assert r.status_code == 200 and r.json()


EVENTS_PER_KEY = 100
EVENTS_PER_ADDRESS = 150


@pytest.fixture(scope="module")
def event_limited(
    engine: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """5 requests per key and window, as in the issue's case, plus limits of events.

    The app in this process (tests.inproc): the limits are the app's and the engine's
    counters, X-Forwarded-For trusted from loopback as `serve` does; no worker needed."""
    settings = engine.settings(
        data_dir=tmp_path_factory.mktemp("evlim") / "data",
        key_prefix="evlim:",
        write_keys=f"{WRITE},{WRITE_OTHER},{WRITE_LIMITED}",
        rate_limit_per_key=5,
        event_limit_per_key=EVENTS_PER_KEY,
        event_limit_per_address=EVENTS_PER_ADDRESS,
        rate_limit_window_s=WINDOW_S,
    )
    with in_process(settings, engine.env | {"EA_KEY_PREFIX": "evlim:"}) as svc:
        yield svc


def _batch(svc: Service, n: int, headers: dict[str, str], user: str) -> httpx.Response:
    body = {"events": [event(user=f"{user}-{i}") for i in range(n)]}
    return svc.http.post(f"{svc.url}/events/batch", json=body, headers=headers)


def test_rate_limits_count_events_not_only_requests(event_limited: InProcessService) -> None:
    """Table row: 5 requests/min per key let 5,000 events/min in (batches of 1,000)."""
    _fresh_window()
    headers = bearer(WRITE)  # one key, one address of its own
    sent: list[str] = []
    first = _batch(event_limited, 60, headers, "a")
    assert first.status_code == 200 and first.json()["accepted"] == 60, first.text
    sent += ["a"] * 60
    over = _batch(event_limited, 60, headers, "b")  # 120 > 100: refused whole
    assert over.status_code == 429, over.text
    assert over.json()["type"].endswith(":rate-limited") and "events" in over.json()["detail"]
    assert int(over.headers["retry-after"]) >= 1
    # A refused batch stored nothing and took nothing from the budget: 40 more still fit.
    rest = _batch(event_limited, EVENTS_PER_KEY - 60, headers, "c")
    assert rest.status_code == 200 and rest.json()["accepted"] == 40, rest.text
    one = event_limited.http.post(f"{event_limited.url}/events", json=event(), headers=headers)
    assert one.status_code == 429, one.text
    # The per-address limit counts across keys: another key from the same address gets
    # what is left of the address's 150.
    other = {**headers, "authorization": f"Bearer {WRITE_OTHER}"}
    assert _batch(event_limited, 51, other, "d").status_code == 429
    assert _batch(event_limited, 50, other, "e").status_code == 200
    realtime = event_limited.http.get(f"{event_limited.url}/analytics/realtime").json()
    assert realtime["events"] == 150, realtime


def test_segment_batches_count_their_messages_against_the_event_limit(
    event_limited: InProcessService,
) -> None:
    _fresh_window()
    # A key and an address of its own: only this test counts against them.
    headers = bearer(WRITE_LIMITED)

    def batch(n: int, tag: str) -> httpx.Response:
        messages = [{"type": "track", "event": "Signed Up", "userId": f"{tag}{i}",
                     "messageId": f"{tag}-{i}"} for i in range(n)]  # fmt: skip
        return event_limited.http.post(
            f"{event_limited.url}/v1/batch", json={"batch": messages}, headers=headers
        )

    assert batch(EVENTS_PER_KEY, "s").status_code == 200
    over = batch(1, "t")
    assert over.status_code == 429 and "events" in over.json()["detail"], over.text
