"""uvicorn's httptools protocol with a deadline and a size limit for the request head,
and connection and concurrency limits that idle sockets cannot exhaust.

uvicorn times out idle keep-alive connections, but not a request whose head arrives
slowly (slowloris: a byte every few seconds holds a connection forever), nor a fresh
connection that sends nothing, and its httptools parser accepts headers of any size.
This subclass closes a connection whose request line and headers are not complete
within ``EA_HEADER_TIMEOUT_S`` (answering 408 if a request had begun), and answers 431
to a head over ``EA_MAX_HEADER_BYTES``. The body has its own deadline, in ``body.py``.

Limits (per worker process), all answered in problem+json with Retry-After, never
uvicorn's plain text. uvicorn's own ``limit_concurrency`` is not used: it counts open
sockets, so ~1,000 idle ones (no request sent) made every route, readiness included,
answer 503. Instead:

- ``EA_MAX_CONCURRENCY``: requests being handled at once (not sockets). Over it: 503
  ``overloaded``, except ``/health/`` and ``/health/ready``, which stay answerable.
- ``EA_MAX_CONNECTIONS``: open sockets. At the cap a new connection closes the oldest
  idle one (no request in progress); when none is idle, it is answered 503.
- ``EA_MAX_CONNECTIONS_PER_ADDRESS``: open sockets per client address (the peer's, not
  X-Forwarded-For; behind a proxy raise it or set 0). Over it: 429, except the health
  routes: an orchestrator probing through the same proxy or NAT as a noisy client must
  not take the instance out of service (the other caps still bound those sockets).

It also sends each response's head and body in one write: uvicorn writes them apart,
two syscalls and, on loopback, two wakeups of the client per response (those writes were
about a quarter of a worker's CPU on POST /events in py-spy; strace: 2.2 -> 1.2 writes
per request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from event_analytics.api.problems import PROBLEM_TYPE, REFUSALS, refusal_body
from event_analytics.config import Settings

RETRY_AFTER_S = 1
# Answered whatever the load: a saturated ingest must not make the service look dead.
UNLIMITED_PATHS = frozenset({b"/health/", b"/health/ready", b"/health"})


class Refused(Exception):
    """Raised inside a parser callback to stop parsing (the parser turns it into a parse
    error): the connection is answered ``_refusal`` and closed."""


def _problem(slug: str, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """One of ``problems.REFUSALS`` (its status, title and body come from there) as a
    response that closes the connection: its headers and body."""
    status, body = refusal_body(slug, detail)
    retry = [(b"retry-after", b"%d" % RETRY_AFTER_S)] if status in (429, 503) else []
    headers = [(b"content-type", PROBLEM_TYPE.encode()), *retry,
               (b"content-length", b"%d" % len(body)), (b"connection", b"close")]  # fmt: skip
    return headers, body


def _raw(slug: str, detail: str) -> bytes:
    """The refusal as bytes on the wire, written before, or instead of, the app: these
    refusals need no request object."""
    status = REFUSALS[slug][0]
    headers, body = _problem(slug, detail)
    head = b"".join(b"%s: %s\r\n" % h for h in headers)
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()) + head + b"\r\n" + body
    )


TIMEOUT_408 = _raw("head-timeout", "the request head was not received in time; send it at once")
TOO_LARGE_431 = _raw("head-too-large", "the request line and headers are larger than the limit")
MALFORMED_400 = _raw("malformed-http", "the request is not valid HTTP/1.1")
TOO_MANY_CONNECTIONS_429 = _raw(
    "too-many-connections",
    f"too many open connections from this address; close idle ones or reuse one "
    f"(keep-alive), retry after {RETRY_AFTER_S} s",
)
NO_CONNECTION_503 = _raw(
    "overloaded",
    f"every connection slot is busy with a request; retry after {RETRY_AFTER_S} s",
)
# Answered through the app interface (the request is parsed; uvicorn writes it).
_OVERLOADED_HEADERS, _OVERLOADED_BODY = _problem(
    "overloaded",
    f"too many requests in progress; nothing was done, retry after {RETRY_AFTER_S} s",
)

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The app of a request over the concurrency limit (its body is not read)."""
    await send({"type": "http.response.start", "status": 503, "headers": _OVERLOADED_HEADERS})
    await send({"type": "http.response.body", "body": _OVERLOADED_BODY})


class _HeadHolder:
    """One response's view of the connection: the response head is held back and leaves
    with the first body bytes, in one write. A 100 Continue goes at once (the client
    waits for it before it sends the body); a head with no body write at all (HEAD)
    leaves when the response completes or the connection closes."""

    __slots__ = ("_before_head", "_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._before_head = True

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif self._before_head and not data.startswith(b"HTTP/1.1 100 "):
            # The response's first write (uvicorn sends the whole head at once).
            self._before_head = False
            self._head = data
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def settings_of(app: Any) -> Settings:
    """The Settings the app was built with (``create_app``), behind uvicorn's wrappers.

    uvicorn builds the protocol, not us; it hands it the loaded app, wrapped in its own
    middleware (proxy headers, ...), each wrapper keeping the next one as ``.app``.
    """
    for _ in range(8):
        settings = getattr(getattr(app, "state", None), "settings", None)
        if isinstance(settings, Settings):
            return settings
        app = getattr(app, "app", None)
    raise RuntimeError("the ASGI app behind uvicorn is not event-analytics' create_app()")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus the head's deadline and size limit (per connection) and
    the connection and concurrency limits (per worker process)."""

    # Every open connection of this process, oldest first, and how many per address.
    _open: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}
    _per_address: ClassVar[dict[str, int]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = settings_of(self.app)
        self.header_timeout_s = settings.header_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self.max_concurrency = settings.max_concurrency
        self.max_connections = settings.max_connections
        self.max_per_address = settings.max_connections_per_address
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_request = False
        # The answer to give instead of parsing on (raised out of a parser callback).
        self._refusal: bytes | None = None
        self._address: str | None = None
        # Past the per-address cap: only the health routes are answered on this socket.
        self._over_address_cap = False

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            if self._in_request:
                self.transport.write(TIMEOUT_408)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self._open) >= self.max_connections and not self._close_an_idle_one():
            transport.write(NO_CONNECTION_503)
            transport.close()
            return
        self._open[self] = None
        if self.client is not None:
            self._address = address = self.client[0]
            count = self._per_address.get(address, 0) + 1
            self._per_address[address] = count
            if self.max_per_address and count > self.max_per_address:
                # Judged when its request's head is complete (a reply before any request
                # is one most clients never read, and the path decides: health routes are
                # answered); cut at the head deadline if none comes.
                self._over_address_cap = True
        self._arm()

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _close_an_idle_one(self) -> bool:
        """Make room: close the oldest connection that is not handling a request (one
        that never sent a whole head, or a kept-alive one between requests)."""
        for other in self._open:
            if not other._busy() and not other.transport.is_closing():
                other._disarm()
                other.transport.close()
                other._forget()
                return True
        return False

    def _forget(self) -> None:
        if self._open.pop(self, False) is None and self._address is not None:
            left = self._per_address[self._address] - 1
            if left:
                self._per_address[self._address] = left
            else:
                del self._per_address[self._address]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._over_address_cap:
            super().data_received(data)
            return
        # Past the per-address cap: uvicorn's own data_received, minus its warning per
        # parse error: each refusal would log one line (an attacker's volume).
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_request = True
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            self._refusal = TOO_LARGE_431
            raise Refused

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_request = False
        if self._over_address_cap and httptools.parse_url(self.url).path not in UNLIMITED_PATHS:
            self._refusal = TOO_MANY_CONNECTIONS_429
            raise Refused  # answered 429 and closed by send_400_response, not logged
        previous = self.cycle
        if self._over_concurrency():
            # uvicorn starts the request's task with self.app; this one request gets ours.
            app, self.app = self.app, _overloaded
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        cycle = self.cycle  # this request's (its task starts on the next loop turn)
        if cycle is not None and cycle is not previous:
            holder = _HeadHolder(self.transport)
            cycle.transport = holder  # type: ignore[assignment]
            completed = cycle.on_response

            def on_response() -> None:
                holder.flush()
                completed()

            cycle.on_response = on_response

    def _over_concurrency(self) -> bool:
        return (
            len(self.tasks) >= self.max_concurrency
            and httptools.parse_url(self.url).path not in UNLIMITED_PATHS
        )

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parse error in plain text; ours in problem+json, and a
        # refusal raised from a callback (head too large, too many connections) as itself.
        if self._refusal == TOO_LARGE_431:
            self.logger.warning("Request head over %d bytes refused.", self.max_header_bytes)
        self.transport.write(self._refusal or MALFORMED_400)
        self.transport.close()
