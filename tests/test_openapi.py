"""The hot routes' OpenAPI is the schema of what validates them, so the docs cannot drift.

POST /events and /events/batch are answered before FastAPI's routing (api/ingest_http.py),
so FastAPI does not describe them from a signature; these tests hold their documented
request schemas to the validating objects: ``EVENT_ADAPTER`` and the batch limits the
ingest path enforces. In-process: the schema needs no server, the limits no engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from event_analytics.api.app import create_app
from event_analytics.config import Settings
from event_analytics.errors import InvalidEvent
from event_analytics.ingest import Ingestor
from event_analytics.keys import Keys
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter

COMPONENTS = "#/components/schemas/"


def inline(node: Any, defs: dict[str, Any], prefix: str) -> Any:
    """``node`` with every ``$ref`` to ``prefix + name`` replaced by ``defs[name]``: two
    schemas compare equal whatever their components are called."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(prefix):
            assert len(node) == 1, node  # a $ref with siblings would mean more than the def
            return inline(defs[ref.removeprefix(prefix)], defs, prefix)
        return {k: inline(v, defs, prefix) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v, defs, prefix) for v in node]
    return node


def documented_request(spec: dict[str, Any], path: str) -> Any:
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert list(body["content"]) == ["application/json"]
    return inline(
        body["content"]["application/json"]["schema"], spec["components"]["schemas"], COMPONENTS
    )


def validating_event_schema() -> Any:
    schema = EVENT_ADAPTER.json_schema()
    return inline(schema, schema.pop("$defs", {}), "#/$defs/")


SETTINGS = [Settings(), Settings(max_batch_events=7, max_body_bytes=4096)]


@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "small-limits"])
def test_events_request_schema_is_the_validators(settings: Settings) -> None:
    spec = create_app(settings).openapi()
    assert documented_request(spec, "/events") == validating_event_schema()


@pytest.mark.parametrize("limit", [1, 7, 1000, 10_000])
def test_batch_request_schema_has_the_enforced_limits(limit: int) -> None:
    settings = Settings(max_batch_events=limit)
    documented = documented_request(create_app(settings).openapi(), "/events/batch")
    assert documented["type"] == "object" and documented["required"] == ["events"]
    events = documented["properties"]["events"]
    assert events["type"] == "array"
    assert events["items"] == validating_event_schema()
    low, high = events["minItems"], events["maxItems"]

    # What the ingest path does at those bounds (every event invalid, so nothing is
    # stored and the client below never connects).
    ingestor = Ingestor(settings, IngestWriter(aioredis.Redis(), Keys()))

    def refusal(n: int) -> str | None:
        body = orjson.dumps({"events": [{}] * n})
        try:
            results = asyncio.run(ingestor.ingest_batch_json(body))
        except InvalidEvent as exc:
            assert exc.errors[0].field == "events"
            return exc.errors[0].code
        assert [r.status for r in results] == ["rejected"] * n
        return None

    assert refusal(low - 1) == "too_short"
    assert refusal(low) is None
    assert refusal(high) is None
    assert refusal(high + 1) == "too_long"
