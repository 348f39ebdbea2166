"""The app in this process: ``create_app`` on a real engine, reached through httpx's ASGI
transport instead of a socket.

For tests about HTTP semantics (status codes, problem+json, validation, query shapes,
OpenAPI, headers): they need the app and a real engine, not uvicorn, workers or a
supervisor, and starting a process per engine costs seconds. What needs processes
(workers, signals, kill -9, the archiver as a process of its own: its crashes and
leases, the embedded engine's life under ``serve``, the HTTP protocol layer: head
limits, slow and oversized bodies on a socket) stays on ``tests.servers``.

The app runs on an event loop of its own, in a thread, with its lifespan around it (the
ASGI transport runs none): its batcher, engine watch and connections live there as they
do in a worker. Tests call it through a synchronous ``httpx.Client``, like ``HTTP``.

On request it runs the archiver on the same loop (``worker.Archiver``, what the
``archiver`` command runs), for tests that read the archive through the API; writes
its log as ``serve`` does (the service's JSON lines, uvicorn's "Exception in ASGI
application" included), for tests that read the log; and listens on a socket too
(``listen``: uvicorn on the same loop), for a client that runs as a process of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import httpx
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from benchmarks.procs import free_port
from event_analytics.api.app import create_app
from event_analytics.api.protocol import GuardedHttpToolsProtocol
from event_analytics.archive.worker import Archiver
from event_analytics.config import Settings
from event_analytics.logs import JsonFormatter
from event_analytics.store import IngestWriter
from event_analytics.store.streams import StreamStore
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


def _logged(app: ASGIApp) -> ASGIApp:
    """``app``, with an exception it raises logged as uvicorn logs it (the ASGI transport
    only turns it into the 500 the client sees)."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except Exception:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application\n")
            raise

    return asgi


class InProcessService:
    """``create_app(settings)`` running with its lifespan; ``http`` is a client of it.

    ``url`` is a base URL for absolute paths (``f"{svc.url}/events"``), as a
    ``ServiceProcess`` has; every request goes to the app, whatever the host.
    """

    url = "http://127.0.0.1"
    # The apps running in this test process: each freezes the process's collector once
    # it has warmed up (api/app.py), so a test of the collector's counts waits for all.
    running: ClassVar[set[InProcessService]] = set()

    def __init__(
        self,
        settings: Settings,
        env: dict[str, str] | None = None,
        archiver: bool = False,
    ) -> None:
        """``env``: what a CLI or a direct ingest needs to reach the same engine.

        ``archiver``: run the archiver into ``settings.archive_path`` beside the app (as
        ``serve`` does; then no other archiver may read the engine's streams under the
        same key prefix)."""
        self.settings = settings
        self.env = env or {}
        self.data_dir = Path(settings.data_dir)
        self.archiver = archiver
        self.log_path: Path | None = None
        self._servers: list[tuple[uvicorn.Server, concurrent.futures.Future[None]]] = []
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._running: asyncio.Future[None] | None = None
        # As `serve` runs it: uvicorn puts a trusted proxy's X-Forwarded-For in the scope
        # (the client address of rate limits); httpx's ASGI transport calls from 127.0.0.1.
        logged = _logged(self.app)
        proxied = ProxyHeadersMiddleware(logged, trusted_hosts=settings.forwarded_allow_ips)  # type: ignore[arg-type]
        # No timeout of its own beyond WAIT_S: a request that gives one is bounded by it.
        self.http = httpx.Client(
            transport=_LoopTransport(proxied, self.loop), base_url=self.url, timeout=WAIT_S
        )

    async def _run(self) -> None:
        """The lifespan, entered and left in one task, as uvicorn does; the archiver
        beside it, stopped first."""
        self._stop = asyncio.Event()
        async with self.app.router.lifespan_context(self.app):
            archiving = asyncio.create_task(self._archive(self._stop)) if self.archiver else None
            InProcessService.running.add(self)
            self._started.set()
            await self._stop.wait()
            if archiving is not None:
                await archiving

    async def _archive(self, stop: asyncio.Event) -> None:
        """As the ``archiver`` command runs it (cli._archiver), until ``stop``."""
        store = IngestWriter.from_settings(self.settings)
        try:
            streams = StreamStore(store.client, store.keys)
            await Archiver(self.settings, streams, self.settings.archive_path).run(stop)
        finally:
            await store.close()

    def start(self) -> None:
        self._thread.start()
        self._running = asyncio.run_coroutine_threadsafe(self._run(), self.loop)
        deadline = time.monotonic() + WAIT_S
        while not self._started.wait(0.05):
            if self._running.done():
                self._running.result()  # startup failed: its exception, here
            assert time.monotonic() < deadline, "the app's startup did not finish"

    @contextmanager
    def logging_to(self, path: Path) -> Iterator[Path]:
        """Meanwhile, write the log records of this process at INFO and above to ``path``
        (``log_path``), as ``serve`` writes its log (``logs.config``): the app's and its
        archiver's, and any other in-process app's alive then (a superset), but not the
        calling thread's (its client's "HTTP Request" lines): the apps run on others."""
        handler = logging.FileHandler(path)
        handler.setFormatter(JsonFormatter())
        handler.setLevel(logging.INFO)
        caller = threading.get_ident()
        handler.addFilter(lambda record: record.thread != caller)
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        self.log_path = path
        try:
            yield path
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            handler.close()

    def listen(self) -> str:
        """Serve the app on a socket of 127.0.0.1 too, as ``serve`` runs uvicorn (its HTTP
        protocol, no access log), until ``stop``; the base URL."""
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=free_port(),
            http=GuardedHttpToolsProtocol,
            h11_max_incomplete_event_size=self.settings.max_header_bytes,
            lifespan="off",  # the app's lifespan runs already (``_run``)
            log_config=None,
            access_log=False,
            timeout_keep_alive=5,
            forwarded_allow_ips=self.settings.forwarded_allow_ips,
        )
        server = uvicorn.Server(config)
        serving = asyncio.run_coroutine_threadsafe(server.serve(), self.loop)
        self._servers.append((server, serving))
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            if serving.done():
                serving.result()  # it failed to start: its exception, here
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{config.port}"

    def stop(self) -> None:
        self.http.close()
        left: list[str] = []
        for server, serving in self._servers:
            server.should_exit = True
            serving.result(timeout=WAIT_S)
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
        InProcessService.running.discard(self)
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
def in_process(
    settings: Settings, env: dict[str, str], archiver: bool = False
) -> Iterator[InProcessService]:
    """The app on ``settings``, started; stopped afterwards (``env``: its engine's;
    ``archiver`` as ``InProcessService`` takes it)."""
    svc = InProcessService(settings, env, archiver=archiver)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()


# Either kind of service: a test helper written against ``url`` and ``http`` takes both.
Service = ServiceProcess | InProcessService
