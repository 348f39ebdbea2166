"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import Receive, Scope, Send

from event_analytics import __version__
from event_analytics.analytics import visit_refresh
from event_analytics.api import (
    admin,
    analytics,
    archive_queries,
    compat,
    compat_docs,
    dashboard,
    events,
    export,
    forward,
    goals,
    health,
    imports,
    ingest_http,
    looplag,
    metrics,
    persistent,
    problems,
    reports,
    shared_links,
    stats,
    stats_export,
    stats_v1,
)
from event_analytics.api.heavy import HeavyReads
from event_analytics.api.security import Guard, ReadGuard, document_security
from event_analytics.api.steps import ANSWERED_ELSEWHERE_SCOPE, RequestSteps, add_read_cors
from event_analytics.archive.files import LineCounter
from event_analytics.config import Settings, load_settings
from event_analytics.errors import StorageUnavailable
from event_analytics.ingest import Ingestor
from event_analytics.store import IngestWriter
from event_analytics.store.connect import connect_reads
from event_analytics.store.ratelimit import RateLimits
from event_analytics.store.reads import Reads
from event_analytics.store.salt import DailySalt
from event_analytics.store.streams import StreamStore, archive_lag_s
from event_analytics.store.watch import EngineWatch
from event_analytics.telemetry import ArchiveGauges, EngineGauges

# The plain-ASGI ingest routes: native, Segment's, Plausible's.
HOT_ROUTES = {**ingest_http.ROUTES, **compat.ROUTES}
# Connections from one worker to the query processes: enough that every read reaches
# their admission (which refuses in a moment) rather than queue unseen in the worker.
FORWARD_CONNECTIONS = 64
# Bounds the wait for cancelled background tasks at shutdown (they end in milliseconds).
TASK_END_WAIT_S = 5.0


async def archive_gauges(app: FastAPI) -> ArchiveGauges | None:
    """Archive lag and dead letters for /metrics, read at scrape time; None while unknown."""
    streams: StreamStore = app.state.streams
    try:
        backlog = await streams.backlog()
    except StorageUnavailable:
        return None
    return ArchiveGauges(lag_seconds=archive_lag_s(backlog), dead_letters=backlog["dead_letters"])


async def engine_gauges(app: FastAPI) -> EngineGauges | None:
    """Each master's memory used and its limit for /metrics, read at scrape time."""
    watch: EngineWatch = app.state.watch
    memory = await watch.refresh()
    if memory is None:
        return None
    return EngineGauges(tuple((n.node, n.used_bytes, n.limit_bytes) for n in memory.nodes))


class App(FastAPI):
    """FastAPI behind the steps every request takes (``steps.RequestSteps``); the ingest
    routes are answered there, before FastAPI's routing: the hot path pays for no layer
    it does not need (ingest_http)."""

    steps: RequestSteps  # around _dispatch; set by create_app
    # In an ingest worker with query processes: the heavy reads go there (api/forward.py).
    forwarder: forward.Forwarder | None = None
    # In a query process: the client's address comes from the worker that forwarded.
    trust_peer = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.steps(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = HOT_ROUTES.get(scope["path"])
        if route is not None:
            scope["app"] = self  # as Starlette sets it: the handlers read app.state
            scope["route"] = route  # the timing and the access log read its path
            await ingest_http.answer(route, scope, receive, send)
            return
        if self.forwarder is not None and forward.forwarded(scope["path"]):
            scope[ANSWERED_ELSEWHERE_SCOPE] = True  # the query process times and logs it
            await self.forwarder(scope, receive, send)
            return
        if self.trust_peer:
            scope["client"] = _peer(scope)
        await super().__call__(scope, receive, send)


def _peer(scope: Scope) -> tuple[str, int] | None:
    """The address the forwarding worker resolved (only it can reach the query socket)."""
    for name, value in scope["headers"]:
        if name == forward.PEER_HEADER:
            return (value.decode("latin-1"), 0)
    return None


async def _freeze_after(startup: Awaitable[None]) -> None:
    """Once the worker has loaded what it keeps (the app, its schemas, the enrichment
    data), move those objects out of the collector's reach. A full collection otherwise
    walks all of them while requests wait: single events at 64 connections had p99
    76-120 ms without this and 36-44 ms with it, at the same throughput and CPU (three
    interleaved A/B rounds). Garbage is collected first so that none of it is kept."""
    await startup
    gc.collect()
    gc.freeze()


def _nothing() -> None:
    pass


async def _ended(*tasks: asyncio.Task[None]) -> None:
    """Cancel the lifespan's background tasks and wait until they have ended, before the
    clients they use close: cancelled mid-command (the engine watch reads every second),
    a task takes a few more turns of the loop to unwind, and a loop stopped before then
    keeps it pending with its connection open (found later by the collector, broken)."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=TASK_END_WAIT_S)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; storage connects in the lifespan, so one factory serves every worker.

    Without ``settings`` (uvicorn's factory call in a worker), the environment's: the
    hand-off of the ``serve`` that started the worker.
    """
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = IngestWriter.from_settings(settings)
        app.state.store = store
        ingestor = Ingestor(settings, store)
        ingestor.start_batching()
        app.state.ingestor = ingestor
        read_client, read_only = connect_reads(settings)
        app.state.reads = Reads(
            store,
            read_client,
            settings.max_query_cost,
            settings.read_chunk_entries,
            read_only=read_only,
        )
        # (In a worker whose heavy reads are forwarded these lanes stay unused.)
        app.state.heavy_reads = HeavyReads(
            settings.max_heavy_reads,
            settings.heavy_read_wait_s,
            "counter",
            budget=settings.counter_read_budget,
            reported=serves_heavy_reads,
        )
        app.state.cheap_reads = HeavyReads(
            settings.max_heavy_reads,
            settings.heavy_read_wait_s,
            "cheap",
            reported=serves_heavy_reads,
        )
        app.state.archive_reads = HeavyReads(
            settings.analytics_max_concurrent,
            settings.heavy_read_wait_s,
            "archive",
            budget=settings.analytics_scan_budget_bytes,
            unit="bytes of archive files",
            reported=serves_heavy_reads,
        )
        app.state.streams = StreamStore(store.client, store.keys)
        limits = None
        if (
            settings.rate_limit_per_key
            or settings.rate_limit_per_address
            or settings.event_limit_per_key
            or settings.event_limit_per_address
        ):
            limits = RateLimits(
                store.client,
                store.keys,
                settings.rate_limit_per_key,
                settings.rate_limit_per_address,
                settings.rate_limit_window_s,
                settings.event_limit_per_key,
                settings.event_limit_per_address,
            )
        app.state.guard = Guard(settings, limits)
        app.state.query_engine = archive_queries.make_engine(settings)
        # Warm entries for the readers' next loads (visit_refresh): idle in a process that
        # answers no archive read (an ingest worker beside query processes) as it reads none.
        refresher = visit_refresh.Refresher(
            app.state.query_engine.visit_cache, lambda: app.state.query_engine.idle
        )
        refresher.start()
        watch = EngineWatch(store, settings)
        app.state.watch = watch
        await watch.refresh()  # before the first event: an evicting engine is refused
        watching = asyncio.create_task(watch.run())
        lagging = asyncio.create_task(looplag.sample("query" if settings.query_role else "ingest"))
        app.state.compat = compat.CompatState.build(settings, DailySalt(store.client, store.keys))
        # The enrichment data (a second or so to load) loads beside startup, not in it: the
        # service is ready at once, and a request that needs it first waits for it. Not in
        # a query process: it answers the forwarded reads only (forward.FORWARDED), never
        # an event to enrich (0.25 CPU-s a start, the ps that geoip2fast runs included).
        warm = _nothing if settings.query_role else app.state.compat.warm
        warming = asyncio.create_task(_freeze_after(asyncio.to_thread(warm)))
        # Whether this app has frozen what it keeps: the freeze moves the process's
        # collector counts, and a test measuring them waits for this app's, not another's.
        app.state.warming = warming
        try:
            yield
        finally:
            watch.stop()
            await _ended(watching, lagging)
            if forwarder is not None:
                await forwarder.close()
            refresher.stop()
            app.state.query_engine.close()
            await warming
            await ingestor.close()
            if read_client is not None:
                await read_client.aclose()
            await store.close()

    app = App(
        title="event-analytics",
        version=__version__,
        description="Exact, live, per-minute event counts and unique users; a durable archive.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Heavy reads are answered here unless query processes answer them for this worker.
    serves_heavy_reads = settings.query_socket is None or settings.query_role
    forwarder = None
    if settings.query_socket is not None and not settings.query_role:
        app.forwarder = forwarder = forward.Forwarder(
            settings.query_socket,
            connections=FORWARD_CONNECTIONS,
            # Past every wait the query process allows itself, and a margin.
            timeout_s=settings.analytics_timeout_s + settings.heavy_read_wait_s + 5,
        )
    app.trust_peer = settings.query_role
    app.state.embedded = settings.embedded_engine
    app.state.line_counter = LineCounter()
    app.state.archive_probe = archive_gauges
    app.state.engine_probe = engine_gauges
    app.steps = RequestSteps(app._dispatch, access_log=settings.access_log)
    problems.install(app)
    # Added last = outermost. Inside out: keys and limits of the FastAPI routes and their
    # CORS (off unless EA_CORS_READ_ORIGINS). The request id, timing and access log are
    # around this stack and the ingest routes alike: App.steps.
    app.add_middleware(ReadGuard)
    if settings.cors_read_origins:
        add_read_cors(app, settings.cors_read_origins)
    routers = (
        health,
        analytics,
        archive_queries,
        stats,
        stats_v1,
        stats_export,
        reports,
        persistent,
        metrics,
        compat,
        goals,
        shared_links,
        export,
        admin,
        imports,
    )
    for module in routers:
        app.include_router(module.router)
    app.include_router(shared_links.pages)
    dashboard.install(app)

    def openapi() -> dict[str, Any]:
        # The hot ingest routes are plain ASGI; their description, built from the models
        # that validate them (events.py), is added here so that /docs and /redoc show them
        # like every other route.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            schema["paths"] = {
                **events.paths(settings, components),
                **compat_docs.paths(components),
                **schema["paths"],
            }
            document_security(schema, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
