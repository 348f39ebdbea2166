"""Connection and concurrency limits (issue 13): idle sockets, many connections from one
address, and requests over the concurrency limit are refused in problem+json with
Retry-After, and health stays answerable.

These limits live in the HTTP protocol, before any engine call: one engine is enough.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from tests.backends import Backend
from tests.helpers import event
from tests.rawhttp import read_response
from tests.servers import ServiceProcess, stopped_after

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("engine", ["valkey"], indirect=True)]

MAX_CONCURRENCY = 2
MAX_CONNECTIONS = 40
PER_ADDRESS = 8
HEAD_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def limited(engine: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = engine.env | {
        "EA_KEY_PREFIX": "limits:",
        "EA_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "EA_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "EA_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
        "EA_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "EA_BODY_TIMEOUT_S": "30",
    }
    data = tmp_path_factory.mktemp("limits") / "data"
    with stopped_after(ServiceProcess(data, env=env, args=["--no-archiver"])) as svc:
        yield svc


def _connect(svc: ServiceProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", svc.port), timeout=20, source_address=(source, 0))


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole response (tests.rawhttp): status, headers (lower-case), body."""
    reply = read_response(sock)
    return reply.status, reply.headers, reply.body


def _request(
    svc: ServiceProcess, raw: bytes, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    with _connect(svc, source) as sock:
        sock.sendall(raw)
        return _response(sock)


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()


def _post_event(body: bytes | None = None, declared: int | None = None) -> bytes:
    body = orjson.dumps(event()) if body is None else body
    length = len(body) if declared is None else declared
    return (
        b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % length + body
    )


def _assert_problem(
    status: int, headers: dict[str, str], body: bytes, want: int, slug: str
) -> None:
    assert status == want, (status, body)
    assert headers["content-type"] == "application/problem+json", headers
    assert int(headers["retry-after"]) >= 1, headers
    problem = orjson.loads(body)
    assert problem["status"] == want and problem["type"].endswith(f":{slug}"), problem


def _closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_flood_does_not_block_requests_and_is_cut(limited: ServiceProcess) -> None:
    """Table row 1: many idle sockets (no request sent) used to make every route answer
    uvicorn's plain-text 503 (its limit_concurrency counted sockets)."""
    # The connection cap's worth of idle sockets, from several addresses (the per-address
    # cap is not what this is about), more than the concurrency limit many times over.
    sources = [f"127.0.1.{i}" for i in range(1, 1 + MAX_CONNECTIONS // PER_ADDRESS)]
    with contextlib.ExitStack() as stack:
        idle = [
            stack.enter_context(_connect(limited, s)) for s in sources for _ in range(PER_ADDRESS)
        ]
        assert len(idle) == MAX_CONNECTIONS
        time.sleep(0.3)  # all accepted by the server before the real requests come
        for raw, want in ((_get("/health/ready"), 200), (_get("/health/"), 200),
                          (_post_event(), 201), (_get("/analytics/realtime"), 200)):  # fmt: skip
            status, _, body = _request(limited, raw)
            assert status == want, (raw, status, body)
        # Every idle socket is closed by the server: evicted to make room, or at the head
        # deadline (bounded wait, well past it).
        deadline = time.monotonic() + HEAD_TIMEOUT_S * 5
        for sock in idle:
            assert _closed_by_server(sock, max(0.1, deadline - time.monotonic())), (
                "idle socket kept"
            )


def test_requests_over_the_concurrency_limit_get_problem_503(limited: ServiceProcess) -> None:
    """Requests in progress (here: bodies still arriving) fill the limit; the next one is
    a problem+json 503 with Retry-After, and both health routes still answer."""
    with contextlib.ExitStack() as stack:
        held = []
        for i in range(MAX_CONCURRENCY):
            sock = stack.enter_context(_connect(limited, f"127.0.3.{i + 1}"))
            sock.sendall(_post_event(b'{"event_id": ', declared=400))
            held.append(sock)
        time.sleep(0.3)
        _assert_problem(*_request(limited, _post_event()), 503, "overloaded")
        _assert_problem(*_request(limited, _get("/analytics/realtime")), 503, "overloaded")
        for path in ("/health/", "/health/ready"):
            status, _, body = _request(limited, _get(path))
            assert status == 200, (path, body)
    # Closed: their requests end, and requests are served again.
    deadline = time.monotonic() + 10
    while (status := _request(limited, _post_event())[0]) != 201:
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.1)


def test_per_address_connection_cap_is_429_except_for_health(limited: ServiceProcess) -> None:
    """Past the cap an address gets 429 on every route but the health probes: an
    orchestrator probing through the same proxy or NAT as a noisy client keeps its answer
    (issue 21, item 5: /health/ready was refused too)."""
    with contextlib.ExitStack() as stack:
        for _ in range(PER_ADDRESS):
            stack.enter_context(_connect(limited, "127.0.2.1"))
        time.sleep(0.3)
        for raw in (_get("/analytics/realtime"), _post_event(), _get("/dashboard")):
            _assert_problem(*_request(limited, raw, "127.0.2.1"), 429, "too-many-connections")
        for path in ("/health/ready", "/health/", "/health"):
            status, _, body = _request(limited, _get(path), "127.0.2.1")
            assert status in ((200, 307) if path == "/health" else (200,)), (path, body)
        # A probe's kept-alive socket past the cap serves probes only.
        with _connect(limited, "127.0.2.1") as probe:
            for _ in range(2):
                probe.sendall(_get("/health/ready"))
                assert _response(probe)[0] == 200
            probe.sendall(_get("/analytics/realtime"))
            _assert_problem(*_response(probe), 429, "too-many-connections")
        # Another address is not affected.
        assert _request(limited, _get("/analytics/realtime"), "127.0.2.2")[0] == 200
    # Closed: the address may connect again.
    deadline = time.monotonic() + 10
    while (status := _request(limited, _get("/analytics/realtime"), "127.0.2.1")[0]) != 200:
        assert status == 429 and time.monotonic() < deadline, status
        time.sleep(0.1)


def test_parse_errors_and_head_limits_are_problem_json(limited: ServiceProcess) -> None:
    status, headers, body = _request(limited, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/problem+json", body
    with _connect(limited) as sock:
        sock.sendall(b"GET /health/ HTTP/1.1\r\nhost: x\r\n")  # the head never ends
        status, headers, body = _response(sock)
    assert status == 408 and headers["content-type"] == "application/problem+json", body
