"""Drop-in ingest: Segment's HTTP Tracking API (/v1/*), Plausible's /api/event, and the
script tag (/js/script.js). Plain ASGI like the native ingest routes (``ingest_http``),
through the same Ingestor: the same validation, dedup, group commit and acknowledgement
(a 2xx only once the engine stored the events, 503 + Retry-After when it cannot).

The mappings themselves are pure (``event_analytics.adapters``); this module only reads
bodies, checks keys and shapes the answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.types import Receive, Scope

from event_analytics import telemetry, tracker
from event_analytics.adapters import plausible, segment
from event_analytics.adapters.common import Mapped
from event_analytics.adapters.enrich import Countries, Enricher, parse_agent
from event_analytics.api.body import decoded, header, read_ingest_body
from event_analytics.api.ingest_http import Admission, IngestRoute, Reply, ingest_state
from event_analytics.api.problems import refuse
from event_analytics.api.security import Access, Guard
from event_analytics.api.steps import NO_ADDRESS_SCOPE
from event_analytics.config import Settings
from event_analytics.errors import BodyTooLarge, InvalidEvent
from event_analytics.ingest import ItemResult, Refused
from event_analytics.store.salt import DailySalt

SCRIPT_PATH = "/js/script.js"


class SegmentTooLarge(BodyTooLarge):
    """Segment answers 400 to an over-size message or batch; its SDKs expect that. A type
    of its own: one problem type has one status (tests/test_problem_types.py)."""

    status, slug, title = 400, "segment-too-large", "Too large for Segment's API"


@dataclass(frozen=True, slots=True)
class CompatState:
    """What the drop-in routes need beside the Ingestor (built once per worker)."""

    segment_enricher: Enricher | None
    browser_enricher: Enricher | None
    salt: DailySalt

    @classmethod
    def build(cls, settings: Settings, salt: DailySalt) -> CompatState:
        if settings.geoip_db is not None and not settings.geoip_db.is_file():
            # At start, loudly: the database itself is read in the background (warm).
            raise ValueError(f"EA_GEOIP_DB: no such file: {settings.geoip_db}")
        enrichers = settings.enrich_segment or settings.enrich_browser
        shared = Enricher(Countries(settings.geoip_db)) if enrichers else None
        return cls(
            shared if settings.enrich_segment else None,
            shared if settings.enrich_browser else None,
            salt,
        )

    def warm(self) -> None:
        """Load the country database and the User-Agent rules now (in a thread), not in
        the first request that needs them."""
        for enricher in (self.segment_enricher, self.browser_enricher):
            if enricher is not None:
                enricher.countries.load()
                parse_agent("Mozilla/5.0")


def _compat(scope: Scope) -> CompatState:
    state: CompatState = scope["app"].state.compat
    return state


def _items(mapped: list[Mapped]) -> list[Any]:
    return [m.event if m.event is not None else Refused(tuple(m.errors)) for m in mapped]


def _count_drops(mapped: list[Mapped], results: list[ItemResult]) -> None:
    # Counted once per stored message: a retry (duplicate) lost nothing new.
    for m, r in zip(mapped, results, strict=True):
        if r.status == "accepted":
            for drop in m.dropped:
                telemetry.properties_dropped(drop.reason)


def _result_row(m: Mapped, r: ItemResult) -> dict[str, Any]:
    row: dict[str, Any] = {"index": r.index, "messageId": m.ref, "event_id": r.event_id,
                           "status": r.status}  # fmt: skip
    if r.errors:
        first = r.errors[0]
        row |= {"code": first.code, "field": first.field, "message": first.message}
        row["errors"] = [e.as_dict() for e in r.errors]
    if m.dropped and r.status != "rejected":
        row["dropped"] = [d.as_dict() for d in m.dropped]
    return row


# -- Segment --------------------------------------------------------------------------


async def segment_route(kind: str | None, scope: Scope, receive: Receive) -> Reply:
    """/v1/batch (``kind`` None) or /v1/<kind>: one message."""
    settings, ingestor = ingest_state(scope)
    limit = segment.MAX_BATCH_BYTES if kind is None else segment.MAX_MESSAGE_BYTES
    try:
        body = await read_ingest_body(scope, receive, limit, settings.body_timeout_s)
        body = decoded(scope, body, limit)
    except BodyTooLarge as exc:
        raise SegmentTooLarge(exc.limit) from None
    envelope = segment.load(body)
    guard: Guard = scope["app"].state.guard
    if guard.write_active:
        body_key = segment.write_key(envelope)
        refusal = await guard.admit(scope, Access.WRITE, body_key=body_key)
        if refusal is not None:
            return refusal
    if guard.counts_events:
        # The event rate limits, by messages as sent: may refuse the whole request.
        await guard.take_events(scope, len(segment.messages(envelope, kind)))
    now = datetime.now(UTC)
    enricher = _compat(scope).segment_enricher
    mapped = segment.map_request(envelope, kind, now, enricher, body_bytes=len(body))
    results = await ingestor.ingest_items(_items(mapped), now, "batch" if kind is None else "")
    _count_drops(mapped, results)
    if kind is not None and results[0].status == "rejected":
        raise InvalidEvent(list(results[0].errors))
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    for r in results:
        counts[r.status] += 1
    rows = [_result_row(m, r) for m, r in zip(mapped, results, strict=True)]
    return 200, orjson.dumps({"success": True, **counts, "results": rows})


SEGMENT_ROUTES = [
    IngestRoute(
        "/v1/batch" if kind is None else f"/v1/{kind}",
        partial(segment_route, kind),
        Admission.BODY,
    )
    for kind in (None, *segment.TYPES)
]


# -- Plausible ------------------------------------------------------------------------


def _address(scope: Scope) -> str:
    # uvicorn has put a trusted proxy's X-Forwarded-For here (EA_FORWARDED_ALLOW_IPS).
    client = scope.get("client")
    return str(client[0]) if client else ""


async def plausible_route(scope: Scope, receive: Receive) -> Reply:
    scope[NO_ADDRESS_SCOPE] = True  # the address identifies a visitor: not in the access log
    settings, ingestor = ingest_state(scope)
    if not settings.browser_ingest:
        return refuse("not-found", "browser ingest is off (EA_BROWSER_INGEST)")
    body = await read_ingest_body(scope, receive, settings.max_body_bytes, settings.body_timeout_s)
    message = segment.load(body)
    guard: Guard = scope["app"].state.guard
    if guard.counts_events:
        await guard.take_events(scope, 1)
    now = datetime.now(UTC)
    state = _compat(scope)
    mapped = plausible.map_event(
        message,
        now,
        salt=await state.salt.of(now),
        ip=_address(scope),
        user_agent=header(scope, b"user-agent") or "",
        enricher=state.browser_enricher,
    )
    results = await ingestor.ingest_items(_items([mapped]), now, "")
    _count_drops([mapped], results)
    (result,) = results
    if result.status == "rejected":
        raise InvalidEvent(list(result.errors))
    reply: dict[str, Any] = {"success": True, "event_id": result.event_id}
    if mapped.dropped:
        reply["dropped"] = [d.as_dict() for d in mapped.dropped]
    return 202, orjson.dumps(reply)


PLAUSIBLE_ROUTE = IngestRoute("/api/event", plausible_route, Admission.KEYLESS, any_origin=True)
ROUTES = {r.path: r for r in (*SEGMENT_ROUTES, PLAUSIBLE_ROUTE)}


# -- the script tag -------------------------------------------------------------------

router = APIRouter(tags=["browser"])


@router.head(SCRIPT_PATH, include_in_schema=False)
@router.get(
    SCRIPT_PATH,
    summary="The tracking script for web pages (Plausible-compatible)",
    description=(
        'Paste `<script defer data-domain="example.com" src="http://HOST/js/script.js">'
        "</script>`: page views on load and on history navigation, custom events with "
        "`ea('signup', {props: {plan: 'pro'}})` (or `plausible(...)`), sent to `/api/event`. "
        "No cookies, no local storage; nothing from localhost unless `data-allow-localhost`."
    ),
    response_class=Response,
    responses={200: {"content": {"application/javascript": {}}, "description": "The script"}},
)
async def script() -> Response:
    return Response(
        tracker.script(),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=3600"},
    )
