"""The ingest workers' hand-over of heavy reads to the query processes (``serve
--query-workers``): the request streams in over a unix socket, the answer streams back.

A heavy read (a counter read merging many entries, every archive query) costs the event
loop that runs it tens of milliseconds to seconds of Python; on the loop that
acknowledges events that was ingest's latency (issue 23: p99 4 ms -> 1.3 s under a read
storm). Here the worker only copies bytes; the query process (a niced uvicorn on
``Settings.query_socket``, the same app with ``query_role``) checks keys and limits,
admits by cost and answers. When it is down or restarting the read is answered 503 with
Retry-After here, and ingest goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yarl
from starlette.types import Message, Receive, Scope, Send

from event_analytics import telemetry
from event_analytics.api.problems import problem

log = logging.getLogger(__name__)

# The routes answered by the query processes: an exact path, or a prefix ending in "/".
# One entry per route family; a new heavy route (the Stats API, exports) is one line.
FORWARDED: tuple[str, ...] = (
    "/analytics/top-pages",
    "/analytics/timeseries",
    "/analytics/funnel",
    "/analytics/retention",
    "/analytics/query",
    # The Stats APIs, the site list and exports: archive scans, however small the answer.
    "/api/v2/query",
    "/api/v1/stats/",
    "/api/sites",
    "/api/v1/sites/export",
    "/api/export",
    "/api/export/",
)
_EXACT = frozenset(p for p in FORWARDED if not p.endswith("/"))
_PREFIXES = tuple(p for p in FORWARDED if p.endswith("/"))

# The client's address as the worker resolved it (after X-Forwarded-For from trusted
# proxies): rate limits and fairness in the query process count it, not the socket's peer.
PEER_HEADER = b"x-ea-peer"
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's.
_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-connection", PEER_HEADER}
)  # fmt: skip
# Written by the worker's own server for every response: not twice.
_OWN = frozenset({b"date", b"server"})
RETRY_AFTER_S = 1
CONNECTION_WAIT_S = 1.0


def forwarded(path: str) -> bool:
    """Whether ``path`` is answered by the query processes."""
    return path in _EXACT or (bool(_PREFIXES) and path.startswith(_PREFIXES))


def route_label(path: str) -> str:
    """The request histogram's route for a read this worker answers itself (a refusal):
    its FORWARDED family, so a client's made-up paths make no new series."""
    if path in _EXACT:
        return path
    return next((p + "{path}" for p in _PREFIXES if path.startswith(p)), path)


class Forwarder:
    """One worker's connection pool to the query processes' socket."""

    def __init__(self, socket: Path, connections: int, timeout_s: float) -> None:
        self.socket = socket
        self.connections = connections
        # Every forwarded read holds one of the pool's connections; a read finding none
        # free within CONNECTION_WAIT_S is refused here (aiohttp's own wait is unbounded).
        self._free = asyncio.Semaphore(connections)
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, on the worker's running loop (aiohttp binds to it).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket), limit=self.connections),
                # No total: a read streams for as long as the query process lets it; only
                # silence past the query's own limits ends it here.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=self.timeout_s),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in scope["headers"] if k.lower() not in _HOP]  # fmt: skip
        client = scope.get("client")
        if client:
            headers.append((PEER_HEADER.decode(), str(client[0])))
        path = scope["raw_path"].decode("latin-1") if scope.get("raw_path") else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        # As sent: yarl would otherwise re-quote the path and query on the way.
        url = yarl.URL(f"http://query{path}" + (f"?{query}" if query else ""), encoded=True)
        has_body = any(k == "content-length" or k == "transfer-encoding" for k, _ in headers)
        # Content-Length is passed on as sent; a chunked body is re-chunked by aiohttp.
        data = _body(receive) if has_body or scope["method"] in ("POST", "PUT") else None
        started = False
        begun = time.perf_counter()

        def refused(status: int) -> None:
            # The query process times what it answers; what this worker answers in its
            # stead, it times here (the worker's RequestTimer never sees these routes).
            route = route_label(scope["path"])
            telemetry.http_request(scope["method"], route, status, time.perf_counter() - begun)

        try:
            await asyncio.wait_for(self._free.acquire(), CONNECTION_WAIT_S)
        except TimeoutError:
            await _all_busy(scope, receive, send, self.connections)
            refused(503)
            return
        telemetry.FORWARDED_IN_FLIGHT.inc()
        try:
            async with self._client().request(
                scope["method"], url, headers=headers, data=data, allow_redirects=False
            ) as answer:
                out = [(k.lower(), v) for k, v in answer.raw_headers
                       if k.lower() not in _HOP and k.lower() not in _OWN]  # fmt: skip
                await send({"type": "http.response.start", "status": answer.status,
                            "headers": out})  # fmt: skip
                started = True
                async for chunk in answer.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if started:
                raise  # the head went out: only dropping the connection tells the client
            refused(await _refused(scope, receive, send, exc))
        finally:
            telemetry.FORWARDED_IN_FLIGHT.dec()
            self._free.release()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _refused(scope: Scope, receive: Receive, send: Send, exc: BaseException) -> int:
    """Answer the read that could not be handed over; its status."""
    if isinstance(exc, TimeoutError):
        response = problem(
            504, "queries-timeout", "Query timed out",
            "the query process sent nothing within its time limit; narrow the range",
        )  # fmt: skip
    else:
        log.warning("query processes unreachable: %s", type(exc).__name__)
        response = problem(
            503, "queries-unavailable", "Queries unavailable",
            f"the query process is restarting; events are still taken, retry after "
            f"{RETRY_AFTER_S} s",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )  # fmt: skip
    await response(scope, receive, send)
    return response.status_code


async def _all_busy(scope: Scope, receive: Receive, send: Send, connections: int) -> None:
    response = problem(
        503, "reads-busy", "Reads busy",
        f"{connections} reads from this worker are with the query processes; retry after "
        f"{RETRY_AFTER_S} s (events are still taken)",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )  # fmt: skip
    await response(scope, receive, send)
