"""The app in this process: ``create_app`` on a real engine, reached through httpx's ASGI
transport instead of a socket.

For tests about HTTP semantics (status codes, problem+json, validation, query shapes,
OpenAPI, headers): they need the app and a real engine, not uvicorn, workers or a
supervisor, and starting a process per engine costs seconds. What needs processes
(workers, signals, kill -9, the archiver, the embedded engine, the HTTP protocol layer:
head limits, slow and oversized bodies on a socket) stays on ``tests.servers``.

The app runs on an event loop of its own, in a thread, with its lifespan around it (the
ASGI transport runs none): its batcher, engine watch and connections live there as they
do in a worker. Tests call it through a synchronous ``httpx.Client``, like ``HTTP``.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from event_analytics.api.app import create_app
from event_analytics.config import Settings
from tests.servers import ServiceProcess

# Bounds every wait on the app's loop (startup, one request, shutdown).
WAIT_S = 60.0


class _LoopTransport(httpx.BaseTransport):
    """A sync transport that hands each request to httpx.ASGITransport on the app's loop."""

    def __init__(self, app: object, loop: asyncio.AbstractEventLoop) -> None:
        # As uvicorn: an exception the app raises after its 500 handler answered is the
        # server's business, and the client sees the 500 (raise_app_exceptions=False).
        self.asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self.asgi.handle_async_request(forwarded)
            content = await response.aread()
            return response.status_code, response.headers.raw, content

        future = asyncio.run_coroutine_threadsafe(send(), self.loop)
        # As over a socket: the request's read timeout bounds the wait for the answer (a
        # test's ``timeout=5`` says "no hang"); WAIT_S where it gives none.
        timeout = request.extensions.get("timeout", {}).get("read") or WAIT_S
        try:
            status, headers, content = future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout(f"no answer within {timeout} s", request=request) from None
        return httpx.Response(status, headers=headers, content=content, request=request)


class InProcessService:
    """``create_app(settings)`` running with its lifespan; ``http`` is a client of it.

    ``url`` is a base URL for absolute paths (``f"{svc.url}/events"``), as a
    ``ServiceProcess`` has; every request goes to the app, whatever the host.
    """

    url = "http://127.0.0.1"

    def __init__(self, settings: Settings, env: dict[str, str] | None = None) -> None:
        """``env``: what a CLI or a direct ingest needs to reach the same engine."""
        self.settings = settings
        self.env = env or {}
        self.data_dir = Path(settings.data_dir)
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._running: asyncio.Future[None] | None = None
        # As `serve` runs it: uvicorn puts a trusted proxy's X-Forwarded-For in the scope
        # (the client address of rate limits); httpx's ASGI transport calls from 127.0.0.1.
        proxied = ProxyHeadersMiddleware(self.app, trusted_hosts=settings.forwarded_allow_ips)  # type: ignore[arg-type]
        # No timeout of its own beyond WAIT_S: a request that gives one is bounded by it.
        self.http = httpx.Client(
            transport=_LoopTransport(proxied, self.loop), base_url=self.url, timeout=WAIT_S
        )

    async def _run(self) -> None:
        """The lifespan, entered and left in one task, as uvicorn does."""
        self._stop = asyncio.Event()
        async with self.app.router.lifespan_context(self.app):
            self._started.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        self._running = asyncio.run_coroutine_threadsafe(self._run(), self.loop)
        deadline = time.monotonic() + WAIT_S
        while not self._started.wait(0.05):
            if self._running.done():
                self._running.result()  # startup failed: its exception, here
            assert time.monotonic() < deadline, "the app's startup did not finish"

    def stop(self) -> None:
        self.http.close()
        left: list[str] = []
        if self._running is not None:
            if self._stop is not None:
                self.loop.call_soon_threadsafe(self._stop.set)
            self._running.result(timeout=WAIT_S)
            ended = asyncio.run_coroutine_threadsafe(_end_tasks_left(), self.loop)
            left = ended.result(timeout=WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=WAIT_S)
        self.loop.close()
        # The lifespan froze what was alive then (gc.freeze, for a worker's latency);
        # in the test process those objects would never be collected afterwards.
        gc.unfreeze()
        # What the lifespan started must have ended with it (uvicorn's asyncio.run would
        # cancel what is left, hiding it). A task left pending here is destroyed by a later
        # test's collection, its connection still open: pytest would blame that test.
        assert not left, f"the app's lifespan ended with tasks still running: {left}"


async def _end_tasks_left() -> list[str]:
    """The tasks still on the app's loop after its lifespan, cancelled and ended (bounded)."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=WAIT_S)
    return sorted(repr(task) for task in tasks)


@contextmanager
def in_process(settings: Settings, env: dict[str, str]) -> Iterator[InProcessService]:
    """The app on ``settings``, started; stopped afterwards (``env``: its engine's)."""
    svc = InProcessService(settings, env)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()


# Either kind of service: a test helper written against ``url`` and ``http`` takes both.
Service = ServiceProcess | InProcessService
