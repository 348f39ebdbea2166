"""Reading raw ASGI request bodies: the content type, the size limit and the time limit."""

from __future__ import annotations

import asyncio
import weakref
import zlib
from collections.abc import Callable, Coroutine
from typing import Any, BinaryIO, ClassVar, TypeVar

import orjson
from starlette.types import Receive, Scope

from event_analytics import telemetry
from event_analytics.errors import BodyTimeout, BodyTooLarge, MalformedJSON, UnsupportedMediaType

T = TypeVar("T")
JSON_TYPES = ("application/json",)
# navigator.sendBeacon() with a string sends text/plain, the one type that needs no CORS
# preflight: the ingest routes read it as JSON.
INGEST_TYPES = ("application/json", "text/plain")


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (latin-1, as HTTP/1.1 sends them), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def require_json(scope: Scope, accepted: tuple[str, ...] = JSON_TYPES) -> None:
    """415 unless the Content-Type is one of ``accepted`` or a ``+json`` type."""
    raw = header(scope, b"content-type")
    media = (raw or "").split(";", 1)[0].strip().lower()
    if media not in accepted and not media.endswith("+json"):
        raise UnsupportedMediaType(raw, accepted)


async def read_limited(
    scope: Scope, receive: Receive, limit: int, timeout_s: float | None = None
) -> bytes:
    """The whole body, or BodyTooLarge as soon as it is known to exceed ``limit``.

    A declared Content-Length over the limit is refused before reading anything;
    a chunked body is refused at the first chunk that crosses the limit. The whole
    body must arrive within ``timeout_s`` (BodyTimeout): a client that trickles bytes
    would otherwise hold a connection and its buffer for as long as it likes.
    """
    _check_declared(scope, limit)
    return await _within(_read(receive, limit), timeout_s)


async def spool_limited(
    scope: Scope, receive: Receive, out: BinaryIO, limit: int, timeout_s: float
) -> int:
    """Write the body to ``out`` as it arrives (never held whole: an import's body may
    be large), with ``read_limited``'s size and time limits; the bytes written."""
    _check_declared(scope, limit)
    return await _within(_spool(receive, out, limit), timeout_s)


def _check_declared(scope: Scope, limit: int) -> None:
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedJSON("invalid Content-Length header")
        if int(declared) > limit:
            raise BodyTooLarge(limit)


async def _within(reading: Coroutine[Any, Any, T], timeout_s: float | None) -> T:
    """Await ``reading``, or BodyTimeout once ``timeout_s`` has passed."""
    if timeout_s is None:
        return await reading
    task = asyncio.current_task()
    assert task is not None
    watchdog = _Watchdog.of(asyncio.get_running_loop())
    watchdog.watch(task, timeout_s)
    try:
        return await reading
    except asyncio.CancelledError:
        if not watchdog.expired(task):
            raise
        task.uncancel()
        raise BodyTimeout(timeout_s) from None
    finally:
        watchdog.forget(task)


class _Watchdog:
    """Deadlines of every body being read in one event loop, checked by one timer.

    A timer per request (``asyncio.timeout``) costs ~10 us on the hot path, more than
    the rest of the body read; this costs a dict insert and delete. Deadlines are kept
    to within ``TICK_S``: a body read is cancelled between ``timeout_s`` and
    ``timeout_s + TICK_S`` after it began.
    """

    TICK_S = 0.25
    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadlines: dict[asyncio.Task[Any], float] = {}
        self.cancelled: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Watchdog:
        found = cls._by_loop.get(loop)
        if found is None:
            found = cls._by_loop[loop] = cls(loop)
        return found

    def watch(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        self.deadlines[task] = self.loop.time() + timeout_s
        if self.timer is None:
            self.timer = self.loop.call_later(self.TICK_S, self._tick)

    def forget(self, task: asyncio.Task[Any]) -> None:
        self.deadlines.pop(task, None)
        self.cancelled.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        return task in self.cancelled

    def _tick(self) -> None:
        now = self.loop.time()
        for task, deadline in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[task]
                self.cancelled.add(task)
                task.cancel()
        # Idle when nothing is being read: no timer runs between requests.
        self.timer = self.loop.call_later(self.TICK_S, self._tick) if self.deadlines else None


async def read_json(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> Any:
    """A small JSON body (a query, a setting): read within ``limit`` and ``timeout_s``
    as ``read_limited`` does, never buffered whole first; MalformedJSON if it is not JSON."""
    body = await read_limited(scope, receive, limit, timeout_s)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(str(exc)) from None


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    await _receive_into(receive, chunks.append, limit)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _spool(receive: Receive, out: BinaryIO, limit: int) -> int:
    return await _receive_into(receive, out.write, limit)


async def _receive_into(receive: Receive, sink: Callable[[bytes], object], limit: int) -> int:
    """Hand each chunk of the body to ``sink`` until the last; the bytes received.
    BodyTooLarge as soon as they pass ``limit``, ClientGone if the client left."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        sink(chunk)
        if not message.get("more_body", False):
            return size


async def read_ingest_body(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes:
    """An ingest route's body (JSON or text/plain), its refusals counted as rejections."""
    try:
        require_json(scope, INGEST_TYPES)
        return await read_limited(scope, receive, limit, timeout_s)
    except (UnsupportedMediaType, BodyTooLarge, BodyTimeout) as exc:
        # The reason code of the metric is the problem's slug (body-too-large: body_too_large).
        telemetry.event_rejected(exc.slug.replace("-", "_"))
        raise


class UnsupportedEncoding(UnsupportedMediaType):
    """A ``Content-Encoding`` this endpoint cannot undo (415, as RFC 9110 says)."""

    def detail(self) -> str:
        return f"Content-Encoding {self.got} is not accepted; send {' or '.join(self.accepted)}"


def decoded(scope: Scope, body: bytes, limit: int) -> bytes:
    """The body as sent before its ``Content-Encoding``: none, or gzip (Segment's SDKs'
    option), inflated to at most ``limit`` bytes (BodyTooLarge past it: no zip bomb)."""
    encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise UnsupportedEncoding(encoding, ("identity", "gzip"))
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedJSON(f"the gzip body is corrupt: {exc}") from None
    if len(out) > limit:
        raise BodyTooLarge(limit)
    if not inflater.eof:
        raise MalformedJSON("the gzip body is truncated")
    return out


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""
