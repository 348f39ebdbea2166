"""Slow and oversized clients, scripts lost by the engine, a hung engine, and the logs.

The slow-client and head-size tests end before the engine is used: they run on one
engine only. Everything that stores or reads runs on the cluster too.

What a socket shows (deadlines, head limits, interim answers: the HTTP protocol layer)
runs on service processes, marked slow; the rest on the app in this process
(tests.inproc), the logs too: the app's log records, written as ``serve`` writes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from event_analytics.config import Settings
from event_analytics.logs import JsonFormatter
from event_analytics.model import EVENT_ADAPTER
from tests.backends import Backend
from tests.helpers import HTTP, event, seed_key
from tests.inproc import InProcessService, in_process
from tests.rawhttp import read_response
from tests.servers import ServiceProcess

WRITE = "hardening-write-key-0001"
READ = "hardening-read-key-00002"
JSON = {"content-type": "application/json"}


# The HTTP layer refuses these before any engine call: one engine says all there is.
http_only = pytest.mark.parametrize("engine", ["valkey"], indirect=True)


@pytest.fixture(scope="module")
def strict(engine: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Short deadlines, a small head limit, keys, and the access log on."""
    env = engine.env | {
        "EA_HEADER_TIMEOUT_S": "1",
        "EA_BODY_TIMEOUT_S": "1",
        "EA_MAX_HEADER_BYTES": "8192",
        "EA_WRITE_KEYS": WRITE,
        "EA_READ_KEYS": READ,
        "EA_ACCESS_LOG": "1",
    }
    svc = ServiceProcess(tmp_path_factory.mktemp("strict") / "data", env=env)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def strict_app(
    engine: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """``strict``'s keys and access log on the app in this process (tests.inproc); no
    archiver (``app_service``'s rule)."""
    settings: Settings = engine.settings(
        data_dir=tmp_path_factory.mktemp("strict-app") / "data",
        key_prefix=engine.prefix,
        write_keys=WRITE,
        read_keys=READ,
        access_log=True,
    )
    with in_process(settings, engine.env) as svc:
        yield svc


def _connect(svc: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", svc.port), timeout=20)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (bounded by the socket's timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@http_only
@pytest.mark.slow
def test_slow_body_gets_408(strict: ServiceProcess) -> None:
    with _connect(strict) as sock:
        sock.sendall(
            b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + WRITE.encode() + b"\r\n"
            b'content-length: 300\r\n\r\n{"event_id": '
        )
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"application/problem+json" in reply and b"body-timeout" in reply


@http_only
@pytest.mark.slow
def test_slow_head_is_cut_off(strict: ServiceProcess) -> None:
    with _connect(strict) as sock:
        sock.sendall(b"POST /events HTTP/1.1\r\nhost: x\r\n")
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    # A connection that never sends anything is closed too, without an answer.
    with _connect(strict) as sock:
        assert _read_all(sock) == b""
    # And a keep-alive connection serves normal requests as before.
    assert HTTP.get(f"{strict.url}/health/").status_code == 200


@http_only
@pytest.mark.slow
def test_head_too_large_gets_431(strict: ServiceProcess) -> None:
    with _connect(strict) as sock:
        sock.sendall(b"GET /health/ HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n")
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert HTTP.get(f"{strict.url}/health/", headers={"x-ok": "a" * 2000}).status_code == 200


def _read_response(sock: socket.socket, to_head: bool = False) -> tuple[bytes, bytes]:
    """One response's head and body from a kept-alive connection (tests.rawhttp)."""
    reply = read_response(sock, to_head)
    return reply.head, reply.body


def test_responses_without_body_writes_and_100_continue(live: ServiceProcess) -> None:
    """The protocol sends a response's head together with its body (one write): a HEAD
    answer (no body is ever written) and an interim 100 Continue must still go out."""
    with _connect(live) as sock:
        sock.sendall(b"HEAD /health/ HTTP/1.1\r\nhost: x\r\n\r\n")
        head, _ = _read_response(sock, to_head=True)
        assert head.split(b"\r\n", 1)[0] in (b"HTTP/1.1 200 OK", b"HTTP/1.1 405 Method Not Allowed")
        # The same connection goes on: a client that waits for 100 Continue gets it
        # before it sends the body, then the answer.
        body = orjson.dumps(event(user="continue"))
        sock.sendall(
            b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"expect: 100-continue\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        sock.sendall(body)
        head, reply = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 201"), head
        assert orjson.loads(reply)["duplicate"] is False
        # And keep-alive still works after both.
        sock.sendall(b"GET /health/ HTTP/1.1\r\nhost: x\r\n\r\n")
        head, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head


def test_payload_numbers_and_nesting_are_bounded(api: InProcessService) -> None:
    # An integer past 64 bits used to pass validation and fail when archived (a 500).
    for raw_value in (b"1" + b"0" * 30, b"-1" + b"0" * 30, b"1e400", b'{"a": {"b": 1}}', b"[1]"):
        body = orjson.dumps(event()).replace(b'"payload":{', b'"payload":{"n":' + raw_value + b",")
        r = api.http.post(f"{api.url}/events", content=body, headers=JSON)
        assert r.status_code == 422, (raw_value, r.text)
        assert r.json()["errors"][0]["code"] in ("property_out_of_range", "invalid_property_value")
    body = orjson.dumps(event()).replace(b'"payload":{', b'"payload":{"n":9223372036854775807,')
    assert api.http.post(f"{api.url}/events", content=body, headers=JSON).status_code == 201


def test_scripts_reloaded_after_script_flush(api: InProcessService, db: Backend) -> None:
    # An engine restart without its scripts (or SCRIPT FLUSH) answers NOSCRIPT to EVALSHA.
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    # Several users: on the cluster they span shards on every master.
    users = [f"user-{i}" for i in range(24)]
    assert api.http.post(f"{api.url}/events", json=event(ts=minute)).status_code == 201
    assert api.http.get(f"{api.url}/analytics/top-pages").status_code == 200
    db.script_flush()
    assert api.http.post(f"{api.url}/events", json=event(ts=minute)).status_code == 201
    db.script_flush()
    batch = {"events": [event(ts=minute, user=u) for u in users]}
    r = api.http.post(f"{api.url}/events/batch", json=batch)
    assert r.status_code == 200 and r.json()["accepted"] == len(users), r.text
    db.script_flush()
    for path in ("/analytics/timeseries", "/analytics/top-pages", "/analytics/realtime",
                 "/analytics/page_views_per_minute?include_users=true"):  # fmt: skip
        assert api.http.get(f"{api.url}{path}").status_code == 200, path
    got = api.http.get(f"{api.url}/analytics/minute-buckets/{seed_key(minute)}").json()
    assert got["count"] == 2 + len(users)


def test_hung_engine_answers_503_then_recovers(killable: Backend, tmp_path: Path) -> None:
    # The app in this process (tests.inproc): the engine's timeouts, the answers and the
    # readiness are the app's; the engine is a real one, stopped and let go.
    settings = killable.settings(
        data_dir=tmp_path / "data", key_prefix=killable.prefix, redis_timeout_s=0.5
    )
    svc = InProcessService(settings, killable.env)
    svc.start()
    # On the cluster: every master (see Backend.pids), so no replica takes over meanwhile.
    pids = killable.pids()
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    first, during = event(ts=minute), event(ts=minute)
    try:
        assert svc.http.post(f"{svc.url}/events", json=first).status_code == 201
        for pid in pids:  # alive but silent: timeouts, not refusals
            os.kill(pid, signal.SIGSTOP)
        r = svc.http.post(f"{svc.url}/events", json=during, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        # The call was sent and its reply never came: it may have run. The answer says so
        # (never "nothing was stored") and that a resend with the same event_id is safe.
        problem = r.json()
        assert problem["type"].endswith(":storage-outcome-unknown"), problem
        assert "may or may not" in problem["detail"] and "same event_id" in problem["detail"]
        ready = svc.http.get(f"{svc.url}/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["engine"]["reachable"] is False
        assert svc.http.get(f"{svc.url}/analytics/realtime", timeout=10).status_code == 503
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while svc.http.get(f"{svc.url}/health/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "no recovery"
            time.sleep(0.1)
        # The 503'd event was stored whole or not at all: its resend settles which, once.
        assert svc.http.post(f"{svc.url}/events", json=during).status_code in (200, 201)
        assert svc.http.post(f"{svc.url}/events", json=first).status_code == 200
        got = svc.http.get(f"{svc.url}/analytics/minute-buckets/{seed_key(minute)}").json()
        assert got["count"] == 2
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        svc.stop()


def test_logs_are_json_with_request_ids_and_no_user_data(
    strict_app: InProcessService, tmp_path: Path
) -> None:
    # The app's log while the test runs, written as ``serve`` writes it (tests.inproc).
    with strict_app.logging_to(tmp_path / "serve.log") as log_path:
        _send_and_read_the_log(strict_app, log_path)


def _send_and_read_the_log(strict: InProcessService, log_path: Path) -> None:
    secrets = ["Secret_User_7731", "secret-page-8842.example", "unknown-key-secret-99321", WRITE]
    write = {"authorization": f"Bearer {WRITE}", **JSON}
    sent = [
        # Valid: a user id and a URL that must not be logged.
        (event(user=secrets[0], url=f"https://{secrets[1]}/p?user={secrets[0]}"), write),
        # Invalid user id, invalid URL, malformed JSON quoting them, too old.
        (event(user=f"{secrets[0]} x"), write),
        (event(url=f"ftp://{secrets[1]}/"), write),
        (f'{{"user_id": "{secrets[0]}", "payload": {{"page_url": "https://{secrets[1]}/"'.encode(),
         write),
        (event(user=secrets[0], ts=datetime.now(UTC) - timedelta(days=90)), write),
        # Keys: unknown, and a write key on the wrong scope.
        (event(user=secrets[0]), {"x-api-key": secrets[2], **JSON}),
    ]  # fmt: skip
    ids = []
    for body, headers in sent:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        r = strict.http.post(f"{strict.url}/events", content=content, headers=headers)
        assert r.status_code < 500
        ids.append(r.headers["x-request-id"])
    r = strict.http.post(f"{strict.url}/events/batch",
                         json={"events": [event(user=secrets[0])] * 2}, headers=write)  # fmt: skip
    ids.append(r.headers["x-request-id"])
    wrong_scope = {"authorization": f"Bearer {WRITE}", "x-request-id": "mine-1"}
    r = strict.http.get(
        f"{strict.url}/analytics/timeseries?page_url=https://{secrets[1]}/", headers=wrong_scope
    )
    assert r.status_code == 403
    ids.append("mine-1")
    deadline = time.monotonic() + 10
    while not all(i in log_path.read_text() for i in ids):
        assert time.monotonic() < deadline, "access log lines missing"
        time.sleep(0.1)
    text = log_path.read_text()
    for secret in secrets:
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    access = {
        line["request_id"]: line for line in lines if line["logger"] == "event_analytics.access"
    }
    assert set(ids) <= access.keys()
    # Refused before routing: no route template, and never the raw path (it holds the URL).
    assert access["mine-1"]["status"] == 403 and access["mine-1"]["route"] == "unmatched"
    assert access[ids[0]]["status"] == 201 and access[ids[0]]["key_id"]


def test_exception_messages_that_may_quote_input_are_not_logged() -> None:
    # pydantic's messages quote the input; an unexpected one must not reach a log line.
    try:
        EVENT_ADAPTER.validate_python({"user_id": "Secret_User_55", "event_id": "x"})
    except ValidationError:
        info = sys.exc_info()
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, info)
    line = json.loads(JsonFormatter().format(record))
    assert "Secret_User_55" not in json.dumps(line)
    assert line["exc"]["type"].endswith("ValidationError") and line["exc"]["frames"]
    # An I/O error's message is kept: it says what failed, and quotes no input.
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except OSError:
        info = sys.exc_info()
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, info)
    assert "Connection refused" in JsonFormatter().format(record)
