"""What every adapter returns per message, and the steps they share."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from event_analytics import revenue
from event_analytics.adapters.enrich import Enricher, Seen
from event_analytics.adapters.flatten import Dropped, Scalar, flatten_into, number, problem
from event_analytics.adapters.names import MAX_TYPE_LENGTH
from event_analytics.errors import FieldError
from event_analytics.model import MAX_PROPERTY_STRING

MAX_USER_ID = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(slots=True)
class Mapped:
    """One message: the native event it became (a dict for EVENT_ADAPTER), or why not.

    ``dropped`` lists the properties that were not kept; ``ref`` is the client's own id
    of the message (Segment's messageId), echoed in its result.
    """

    index: int
    event: dict[str, Any] | None = None
    errors: list[FieldError] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    ref: str | None = None

    def reject(self, code: str, where: str, message: str) -> Mapped:
        self.errors.append(FieldError(code, where, message))
        self.event = None
        return self


def user_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a user id (None when it can): printable, 1-255 characters."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_USER_ID:
        return f"is longer than {MAX_USER_ID} characters"
    if _CONTROL.search(value):
        return "must not contain control characters"
    return None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive = UTC), or None when it is not one."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def build_payload(
    mapped: Mapped,
    ours: dict[str, Scalar],
    seen: Seen | None,
    enricher: Enricher | None,
    sent: Mapping[str, Any],
) -> tuple[dict[str, Scalar], bool]:
    """Our fields, then enrichment, then the sent properties flattened; and "is a bot".

    A mapped string longer than the payload allows is dropped like a sent one.
    """
    payload: dict[str, Scalar] = {}
    for name, sent_value in ours.items():
        if sent_value is None:
            continue
        if isinstance(sent_value, str):
            why = "too_long" if len(sent_value) > MAX_PROPERTY_STRING else None
            value: Any = sent_value
        else:  # a number sent (Plausible's revenue amount): the same rules as properties'
            value = number(sent_value)
            why = problem(value)
        if why is not None and name != "page_url":
            mapped.dropped.append(Dropped(name, why))
            continue
        payload[name] = value
    bot = False
    if seen is not None and enricher is not None:
        extra = enricher.fields(seen)
        bot = bool(extra.get("bot"))
        payload |= extra
    # A sent property may not pose as revenue: only add_revenue's checked values are.
    flatten_into(payload, sent, mapped.dropped, reserved=revenue.FIELDS)
    return payload, bot


def add_revenue(
    ours: dict[str, Scalar], mapped: Mapped, where: str, amount: Any, currency: Any
) -> None:
    """Set the payload's revenue fields (revenue.py's exact form) from what a tracker sent,
    or list ``where`` as dropped: ``invalid_revenue`` (no exact bounded amount) or
    ``invalid_currency`` (no three-letter code). Both fields are kept, or neither."""
    text, code = revenue.amount(amount), revenue.currency(currency)
    if text is None:
        mapped.dropped.append(Dropped(where, "invalid_revenue"))
    elif code is None:
        mapped.dropped.append(Dropped(where, "invalid_currency"))
    else:
        ours[revenue.AMOUNT_FIELD], ours[revenue.CURRENCY_FIELD] = text, code


def bot_type(event_type: str) -> str:
    """Bots are counted apart: their events get their own types (``bot_page_view``)."""
    return ("bot_" + event_type)[:MAX_TYPE_LENGTH].rstrip("_")
