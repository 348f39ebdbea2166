"""uvicorn's httptools protocol with a deadline and a size limit for the request head.

uvicorn times out idle keep-alive connections, but not a request whose head arrives
slowly (slowloris: a byte every few seconds holds a connection forever), nor a fresh
connection that sends nothing, and its httptools parser accepts headers of any size.
This subclass closes a connection whose request line and headers are not complete
within ``EA_HEADER_TIMEOUT_S`` (answering 408 if a request had begun), and answers 431
to a head over ``EA_MAX_HEADER_BYTES``. The body has its own deadline, in ``body.py``.

It also sends each response's head and body in one write: uvicorn writes them apart,
two syscalls and, on loopback, two wakeups of the client per response (those writes were
about a quarter of a worker's CPU on POST /events in py-spy; strace: 2.2 -> 1.2 writes
per request).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from event_analytics.config import Settings


class HeadersTooLarge(Exception):
    """Raised inside the parser's callback; the parser turns it into a parse error."""


def _plain(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


TIMEOUT_408 = _plain(b"408 Request Timeout", b"request head not received in time")
TOO_LARGE_431 = _plain(b"431 Request Header Fields Too Large", b"request head too large")


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
    """HttpToolsProtocol plus the head's deadline and size limit (per connection)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = settings_of(self.app)
        self.header_timeout_s = settings.header_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_request = False
        self._too_large = False

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
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

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
            self._too_large = True
            raise HeadersTooLarge

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_request = False
        previous = self.cycle
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

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parse error 400; ours, a head too large, is a 431.
        if self._too_large:
            self.logger.warning("Request head over %d bytes refused.", self.max_header_bytes)
            self.transport.write(TOO_LARGE_431)
            self.transport.close()
            return
        super().send_400_response(msg)
