"""Plausible's events API (``POST /api/event``) to our events.

Plausible's tracker sends short keys (``n u d r p $ i h``), its docs long ones
(``name url domain referrer props revenue interactive``): both are read. There is no
user id: the visitor is a hash of a secret salt that rotates daily, the site, the
client's IP and its User-Agent (``visitor_id``), as Plausible does it, so a "user" here is
a visitor per day and per site, and neither the IP nor a cookie is kept.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from event_analytics.adapters import names
from event_analytics.adapters.common import Mapped, add_revenue, bot_type, build_payload
from event_analytics.adapters.enrich import Enricher, Seen
from event_analytics.adapters.flatten import Scalar
from event_analytics.decode import parse_json
from event_analytics.errors import DuplicateKey, MalformedJSON

FIELDS = {"n": "name", "u": "url", "d": "domain", "r": "referrer", "p": "props", "m": "props",
          "meta": "props", "$": "revenue", "i": "interactive", "h": "hash"}  # fmt: skip
MAX_DOMAIN = 253


def visitor_id(salt: bytes, domain: str, ip: str, user_agent: str) -> str:
    """The day's id of one visitor of one site: keyed BLAKE2b, 128 bits, hex.

    Without the salt (kept in the engine, replaced at UTC midnight) the id cannot be
    tied back to an IP, nor two days' ids to each other.
    """
    digest = hashlib.blake2b(key=salt[:64], digest_size=16)
    for part in (domain, ip, user_agent):
        digest.update(part.encode("utf-8", "replace"))
        digest.update(b"\x00")
    return digest.hexdigest()


def long_keys(body: dict[str, Any]) -> dict[str, Any]:
    """The request with the tracker's short keys spelled out (a long key wins)."""
    out = {FIELDS.get(k, k): v for k, v in body.items() if k in FIELDS}
    out.update({k: v for k, v in body.items() if k not in FIELDS})
    return out


def _json_object(value: Any) -> dict[str, Any] | None:
    # The tracker sends props and revenue as JSON text inside the JSON body: read by the
    # same decoder as the body (a key twice in it refuses the request, as in the body).
    if isinstance(value, str):
        try:
            value = parse_json(value)
        except DuplicateKey:
            raise
        except MalformedJSON:
            return None
    return value if isinstance(value, dict) else None


def map_event(
    body: Any,
    received_at: datetime,
    *,
    salt: bytes,
    ip: str,
    user_agent: str,
    enricher: Enricher | None,
) -> Mapped:
    """One Plausible event; its time is when it arrived (the tracker sends none)."""
    out = Mapped(0)
    if not isinstance(body, dict):
        return out.reject("invalid_message", "", "the body must be a JSON object")
    event = long_keys(body)
    name, url, domain = event.get("name"), event.get("url"), event.get("domain")
    for value, field in ((name, "name"), (url, "url"), (domain, "domain")):
        if not isinstance(value, str) or not value:
            return out.reject("missing", field, f"{field} is required (a non-empty string)")
    assert isinstance(name, str) and isinstance(url, str) and isinstance(domain, str)
    if len(domain) > MAX_DOMAIN:
        return out.reject("invalid_domain", "domain", f"domain is at most {MAX_DOMAIN} chars")
    if not event.get("hash"):
        url = url.split("#", 1)[0]  # as Plausible: the fragment counts only in hash mode
    event_type = "page_view" if name == "pageview" else names.track_type(name)
    ours: dict[str, Scalar] = {"page_url": url, "domain": domain}
    if event_type != "page_view":
        ours["event_name"] = name
    if event.get("interactive") is False:
        ours["interactive"] = False
    sent_revenue = event.get("revenue")
    if sent_revenue is not None:
        # {"amount": 1322.22 or "1322.22", "currency": "USD"}: kept exact (revenue.py).
        money = _json_object(sent_revenue) or {}
        add_revenue(ours, out, "revenue", money.get("amount"), money.get("currency"))
    props = _json_object(event.get("props")) or {}
    referrer = event.get("referrer")
    seen = Seen(
        page_url=url,
        referrer=referrer if isinstance(referrer, str) else None,
        user_agent=user_agent,
        ip=ip,
    )
    payload, bot = build_payload(out, ours, seen, enricher, props)
    out.event = {
        "event_id": str(uuid.uuid4()),  # every request is an event: nothing to dedup by
        "user_id": visitor_id(salt, domain, ip, user_agent),
        "timestamp": received_at,  # a datetime: see model._iso_only
        "event_type": bot_type(event_type) if bot else event_type,
        "payload": payload,
    }
    return out
