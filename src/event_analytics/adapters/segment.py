"""The Segment HTTP Tracking API (and its copies: RudderStack, Jitsu) to our events.

``track`` -> its normalised event name, ``page``/``screen`` -> ``page_view`` /
``screen_view``, ``identify``/``group``/``alias`` -> their own types. Field by field in
docs/api.md ("Segment").
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from jiter import LosslessFloat

from event_analytics.adapters import names
from event_analytics.adapters.common import (
    Mapped,
    add_revenue,
    bot_type,
    build_payload,
    parse_time,
    user_problem,
)
from event_analytics.adapters.enrich import Enricher, Seen
from event_analytics.adapters.flatten import Scalar
from event_analytics.decode import parse_json
from event_analytics.errors import FieldError, InvalidEvent, MalformedJSON

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
MAX_MESSAGE_ID = 100
TYPES = ("track", "page", "screen", "identify", "group", "alias")
EVENT_TYPES = {"page": "page_view", "screen": "screen_view", "identify": "identify",
               "group": "group", "alias": "alias"}  # fmt: skip
_OTHER_IDS = {"group": ("groupId", "group_id"), "alias": ("previousId", "previous_id")}
# messageIds that are not UUIDs become UUIDv5 in this namespace: the same messageId is
# always the same event id, so an SDK's retry is a duplicate. (Fixed forever.)
NAMESPACE = uuid.UUID("6f1b2a4e-8c3d-5e7f-9a0b-1c2d3e4f5a6b")


# SHA-1 of the namespace alone, copied per name: the namespace is hashed once.
_NAMESPACE_SHA1 = hashlib.sha1(NAMESPACE.bytes, usedforsecurity=False)
# A UUID as str(uuid.UUID(...)) writes it: such a messageId (lower-cased) is its own text.
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def event_id(message_id: str) -> str:
    """The event id of a messageId: itself when it is a UUID (36 characters), else UUIDv5.

    ``uuid.uuid5`` without its UUID objects (this runs per message): SHA-1 of namespace and
    name, version 5 and the RFC 4122 variant set in the text (tests hold it to uuid5).
    A UUID written the usual way (what the SDKs send) is matched, not parsed.
    """
    if len(message_id) == 36:
        low = message_id.lower()
        if _UUID_TEXT.fullmatch(low):
            return low
        try:  # the other spellings uuid.UUID reads ("{...}", hyphens elsewhere)
            return str(uuid.UUID(message_id))
        except ValueError:
            pass
    sha1 = _NAMESPACE_SHA1.copy()
    sha1.update(message_id.encode())
    h = sha1.hexdigest()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def load(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body (MalformedJSON, DuplicateKey otherwise).

    Read by the one decoder of every ingest path (``decode.py``): integers exact at any
    size, floats as their text until ``flatten`` checks them, a key twice refused.
    """
    envelope = parse_json(body)
    if not isinstance(envelope, dict):
        raise MalformedJSON("the body must be a JSON object")
    return envelope


def _number_text(value: Any) -> Any:
    if isinstance(value, LosslessFloat):
        return orjson.Fragment(bytes(value))  # as sent
    raise TypeError


def json_size(message: Any) -> int:
    """Bytes of a message as compact JSON (about what it took in the body)."""
    try:
        return len(orjson.dumps(message, default=_number_text))
    except orjson.JSONEncodeError:  # an integer past 64 bits: rare, so the slow encoder
        text = json.dumps(message, default=lambda v: bytes(v).decode(), separators=(",", ":"))
        return len(text.encode())


def write_key(envelope: Mapping[str, Any]) -> str | None:
    key = envelope.get("writeKey")
    return key if isinstance(key, str) and key else None


def messages(envelope: Mapping[str, Any], kind: str | None) -> list[Any]:
    """The messages of a request: ``batch`` of /v1/batch, or the body of /v1/<kind>."""
    if kind is not None:
        return [{**envelope, "type": kind}]
    batch = envelope.get("batch")
    problem = None
    if not isinstance(batch, list):
        problem = FieldError("missing", "batch", 'the body must be {"batch": [ ... ]}')
    elif not batch:
        problem = FieldError("too_short", "batch", "batch must hold at least one message")
    elif len(batch) > MAX_BATCH_MESSAGES:
        problem = FieldError(
            "too_long", "batch", f"at most {MAX_BATCH_MESSAGES} messages per batch"
        )
    if problem is not None:
        raise InvalidEvent([problem])
    assert isinstance(batch, list)
    return batch


def map_request(
    envelope: Mapping[str, Any],
    kind: str | None,
    received_at: datetime,
    enricher: Enricher | None,
    body_bytes: int | None = None,
) -> list[Mapped]:
    """Every message of one request mapped on its own: one bad message spoils no other.

    ``body_bytes``, the request's size: when it is within one message's limit, no message
    can be over it, and the per-message size check (a JSON encoding each) is skipped.
    """
    items = messages(envelope, kind)
    shared_context = envelope.get("context")
    sent_at = envelope.get("sentAt") if kind is None else None
    check_size = body_bytes is None or body_bytes > MAX_MESSAGE_BYTES
    return [
        map_message(i, m, received_at, enricher, sent_at, shared_context, check_size=check_size)
        for i, m in enumerate(items)
    ]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id_text(value: Any) -> Any:
    # Some SDKs send numeric ids; Segment keeps them as their decimal text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def map_message(
    index: int,
    message: Any,
    received_at: datetime,
    enricher: Enricher | None,
    batch_sent_at: Any = None,
    shared_context: Any = None,
    *,
    check_size: bool = True,
) -> Mapped:
    out = Mapped(index)
    if not isinstance(message, dict):
        return out.reject("invalid_message", "", "each message must be a JSON object")
    raw_id = message.get("messageId")
    if isinstance(raw_id, str):
        out.ref = raw_id[:MAX_MESSAGE_ID]
    if check_size and json_size(message) > MAX_MESSAGE_BYTES:
        return out.reject(
            "message_too_large", "", f"a message is at most {MAX_MESSAGE_BYTES} bytes as JSON"
        )
    kind = message.get("type")
    if kind not in TYPES:
        return out.reject("invalid_type", "type", f"type must be one of {', '.join(TYPES)}")
    # -- id: the dedup key
    if raw_id is None:
        # Nothing to recognise a retry by (Segment's SDKs always send one).
        ident = str(uuid.uuid4())
    elif not isinstance(raw_id, str) or not 1 <= len(raw_id) <= MAX_MESSAGE_ID:
        return out.reject(
            "invalid_message_id", "messageId", f"messageId is a string of 1-{MAX_MESSAGE_ID} chars"
        )
    else:
        ident = event_id(raw_id)
    # -- user
    user_id, anonymous_id = _id_text(message.get("userId")), _id_text(message.get("anonymousId"))
    if user_id is None and anonymous_id is None:
        return out.reject("missing_user", "userId", "userId or anonymousId is required")
    user = user_id if user_id is not None else anonymous_id
    where = "userId" if user_id is not None else "anonymousId"
    problem = user_problem(user)
    if problem is not None:
        return out.reject("invalid_user_id", where, f"{where} {problem}")
    # -- time, corrected for the client's clock
    stamp = message.get("timestamp", message.get("originalTimestamp"))
    sent_raw = message.get("sentAt", batch_sent_at)
    ts = parse_time(stamp) if stamp is not None else None
    if stamp is not None and ts is None:
        return out.reject("invalid_timestamp", "timestamp", "timestamp must be ISO 8601")
    sent = parse_time(sent_raw) if sent_raw is not None else None
    if sent_raw is not None and sent is None:
        return out.reject("invalid_timestamp", "sentAt", "sentAt must be ISO 8601")
    try:
        moment = received_at if ts is None else ts if sent is None else received_at - (sent - ts)
        # A datetime for validation (model._iso_only): no text to write and parse again.
        moment = moment.astimezone(UTC)
    except OverflowError:
        return out.reject("invalid_timestamp", "timestamp", "timestamp is out of range")
    # -- type, page and what is kept
    context = _dict(message.get("context"))
    if shared_context:  # the batch's own context (rare): the message's fields win
        context = {**_dict(shared_context), **context}
    page = _dict(context.get("page"))
    properties = _dict(message.get("properties"))
    url = page.get("url")
    if "url" in properties:  # not a property: it is the page's URL
        properties = dict(properties)
        sent_url = properties.pop("url")
        url = sent_url if isinstance(sent_url, str) else url
    ours: dict[str, Scalar] = {}
    if "revenue" in properties and kind == "track":
        # Segment's revenue and currency (USD when absent, as Segment reads it) become
        # the payload's exact revenue fields, in place of the properties (revenue.py).
        properties = dict(properties)
        sent_amount, sent_currency = properties.pop("revenue"), properties.pop("currency", "USD")
        add_revenue(ours, out, "revenue", sent_amount, sent_currency)
    if isinstance(url, str) and (kind == "page" or url.startswith(("http://", "https://"))):
        ours["page_url"] = url
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name:
            return out.reject("missing_event", "event", "track messages need an event name")
        event_type = names.track_type(name)
        ours["event_name"] = name
    else:
        event_type = EVENT_TYPES[kind]
        for field in ("name", "category"):
            value = message.get(field)
            if isinstance(value, str):
                ours[field] = value
    if user_id is not None and isinstance(anonymous_id, str):
        ours["anonymous_id"] = anonymous_id
    if kind in _OTHER_IDS:
        field, name = _OTHER_IDS[kind]
        other = _id_text(message.get(field))
        if isinstance(other, str):
            ours[name] = other
    seen = None
    referrer, agent, ip = page.get("referrer"), context.get("userAgent"), context.get("ip")
    campaign = context.get("campaign")
    utm = isinstance(url, str) and "utm_" in url
    # Server-side messages mostly carry none of these: no enrichment to run then.
    if enricher is not None and (referrer or agent or ip or campaign or utm):
        seen = Seen(
            page_url=url if isinstance(url, str) else None,
            referrer=referrer if isinstance(referrer, str) else None,
            user_agent=agent if isinstance(agent, str) else None,
            ip=ip if isinstance(ip, str) else None,
            campaign=_dict(campaign),
        )
    sent_props = _dict(message.get("traits")) if kind in ("identify", "group") else properties
    payload, bot = build_payload(out, ours, seen, enricher, sent_props)
    out.event = {
        "event_id": ident,
        "user_id": user,
        "timestamp": moment,
        "event_type": bot_type(event_type) if bot else event_type,
        "payload": payload,
    }
    return out
