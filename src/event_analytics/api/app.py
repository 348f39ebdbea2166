"""The FastAPI application factory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from event_analytics import __version__
from event_analytics.api import analytics, events, health, persistent, problems, reports
from event_analytics.config import Settings, get_settings
from event_analytics.ingest import Ingestor
from event_analytics.keys import Keys
from event_analytics.model import Event
from event_analytics.store import Store, connect
from event_analytics.store.reads import Reads

EMBEDDED_ENV = "EA_EMBEDDED_ENGINE"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; storage connects in the lifespan, so one factory serves every worker."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(connect(settings), Keys(settings.key_prefix, settings.shards))
        app.state.store = store
        app.state.ingestor = Ingestor(settings, store)
        app.state.reads = Reads(store)
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="event-analytics",
        version=__version__,
        description="Exact, live, per-minute event counts and unique users; a durable archive.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.embedded = os.environ.get(EMBEDDED_ENV) == "1"
    app.state.archiver_running = False
    problems.install(app)
    for module in (health, events, analytics, reports, persistent):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        # The fast routes read raw bodies; their schemas are added here so /docs shows them.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            event_schema = Event.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(event_schema.pop("$defs", {}))
            components["Event"] = event_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
