"""The one JSON decoder of request bodies: /events, /events/batch and the drop-in routes
(Segment's /v1/*, Plausible's /api/event) read numbers and keys the same way, so no path
stores a number other than the one sent.

jiter (pydantic's own JSON parser) with:

- integers exact, of any size (then refused past 64 bits by the payload's rules), where
  orjson turned a 30-digit integer into the float ``1e+30``;
- floats kept as their text (``LosslessFloat``) until checked: a float whose text is not
  the number that will be stored (a 60,000-digit ``1.000...1`` is stored as ``1.0``) stays
  a LosslessFloat, which the payload refuses (``property_not_exact``); the others become
  floats (one beyond the float range becomes infinity: out of range). ``NaN`` and
  ``Infinity`` are not JSON: refused as malformed;
- a key twice in one object refused (400 ``duplicate-key``) instead of the last one
  silently winning.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import jiter

from event_analytics.errors import DuplicateKey, MalformedJSON
from event_analytics.model import Event, validate_event

# jiter reports errors as ValueError with text only; this one is a key sent twice.
_DUPLICATE = "Detected duplicate key"


def parse_json(body: bytes | str) -> Any:
    """Parse a body, every float left a LosslessFloat (``exact_number`` turns one into a
    float where it is read: the drop-in mappings walk their nested properties anyway).
    Raises DuplicateKey or MalformedJSON."""
    data = body.encode() if isinstance(body, str) else body
    try:
        # cache_mode="keys": values (ids, timestamps) rarely repeat, so caching them costs
        # more than it saves (~15% of the parse for a batch of 100 events, CPU time).
        value = jiter.from_json(
            data,
            allow_inf_nan=False,
            catch_duplicate_keys=True,
            float_mode="lossless-float",
            cache_mode="keys",
        )
    except ValueError as exc:
        message = str(exc)
        if message.startswith(_DUPLICATE):
            raise DuplicateKey(message) from None
        raise MalformedJSON(message) from None
    return value


def decode_json(body: bytes | str) -> Any:
    """Parse a native request body: its floats, as deep as events go, exact or refused.
    Raises DuplicateKey or MalformedJSON."""
    return _floats(parse_json(body), depth=0)


# Events are flat: an event's values (depth 1 in a body of one event, 3 in a batch) and
# its payload's (2 or 4). Deeper values are refused by the schema anyway (no nesting).
_MAX_DEPTH = 4
_Lossless = jiter.LosslessFloat


def _floats(value: Any, depth: int) -> Any:
    if type(value) is _Lossless:
        return exact_number(value)
    if type(value) is dict or type(value) is list:
        _floats_in(value, depth)
    return value


def _floats_in(container: dict[str, Any] | list[Any], depth: int) -> None:
    """Replace, in place, the LosslessFloats of ``container`` (the values at ``depth`` + 1)
    and of its containers down to ``_MAX_DEPTH``."""
    if depth >= _MAX_DEPTH:
        return
    pairs = container.items() if type(container) is dict else enumerate(container)
    found: list[tuple[Any, float | jiter.LosslessFloat]] = []
    for key, value in pairs:
        kind = type(value)
        if kind is _Lossless:
            found.append((key, exact_number(value)))
        elif kind is dict or kind is list:
            _floats_in(value, depth + 1)
    for key, number in found:
        container[key] = number


def exact_number(value: jiter.LosslessFloat) -> float | jiter.LosslessFloat:
    """The float, when it is the number the text says (what the archive will hold); an
    overflow becomes infinity, which the payload refuses as out of range."""
    number = float(value)
    if not math.isfinite(number) or Decimal(bytes(value).decode()) == Decimal(repr(number)):
        return number
    return value


def decode_event(body: bytes | str) -> Event:
    """Parse and validate one event. Raises MalformedJSON (DuplicateKey) or InvalidEvent."""
    return validate_event(decode_json(body))
