"""Nested properties to our flat payload, with every loss listed (never silent).

``{"product": {"sku": "A1"}}`` becomes ``{"product.sku": "A1"}``; lists are indexed
(``items.0.sku``). What cannot be kept is dropped and reported as ``Dropped``:

- ``too_deep``: nested deeper than ``MAX_DEPTH`` levels;
- ``invalid_name``: a name that is empty or longer than 64 characters once normalised;
- ``duplicate_name``: two names that normalise to the same one (the first is kept);
- ``reserved``: a name our mapping sets itself (``page_url``, ``event_name``, ...);
- ``too_long``: a string longer than ``model.MAX_PROPERTY_STRING`` characters;
- ``out_of_range``: an integer outside 64 bits, or a float beyond the float range;
- ``not_exact``: a float whose text is not the number a 64-bit float holds (issue 13's
  number model, as on /events: ``0.12345678901234567890123`` is not stored as ``0.1234...``);
- ``too_many``: past ``model.MAX_PROPERTIES`` properties in all (ours count first);
- ``invalid_revenue`` / ``invalid_currency``: a tracker's revenue without an exact bounded
  amount / a three-letter currency (``common.add_revenue``; then neither field is kept).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jiter import LosslessFloat

from event_analytics.adapters.names import property_name
from event_analytics.decode import exact_number
from event_analytics.model import MAX_INT, MAX_PROPERTIES, MAX_PROPERTY_STRING, MIN_INT

MAX_DEPTH = 4
Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Dropped:
    """One property that was not kept: its path as sent, and why."""

    property: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"property": self.property, "reason": self.reason}


_SCALARS = (str, int, float, bool, type(None), LosslessFloat)


def _leaves(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every leaf in sent order; a container past MAX_DEPTH is one leaf."""
    # JSON gives dicts and lists: exact types, cheaper to test than the Mapping ABC.
    if isinstance(value, dict) and len(path) < MAX_DEPTH:
        for key, inner in value.items():
            if type(inner) in _SCALARS:  # most properties: no generator to recurse into
                yield (*path, str(key)), inner
            else:
                yield from _leaves(inner, (*path, str(key)))
    elif isinstance(value, list) and len(path) < MAX_DEPTH:
        for index, inner in enumerate(value):
            yield from _leaves(inner, (*path, str(index)))
    else:
        yield path, value


def _named_leaves(sources: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of ``sources``; a top-level scalar under a string
    key (most properties) as it is, without a path to build and join."""
    for key, value in sources.items():
        if type(value) in _SCALARS and type(key) is str:
            yield key, value
        else:
            for path, leaf in _leaves(value, (str(key),)):
                yield ".".join(path), leaf


def number(value: Any) -> Any:
    """A parsed float (decode.parse_json leaves them LosslessFloat) as the float it is, or
    left a LosslessFloat when no float is exactly it (``problem`` says ``not_exact``)."""
    return exact_number(value) if isinstance(value, LosslessFloat) else value


def problem(value: Any) -> str | None:
    """Why a leaf (after ``number``) cannot be a payload value, or None."""
    if isinstance(value, LosslessFloat):
        return "not_exact"
    if isinstance(value, float) and not math.isfinite(value):
        return "out_of_range"
    if isinstance(value, dict | list):
        # Empty containers have no leaves and vanish without loss; a non-empty one here
        # sits deeper than MAX_DEPTH.
        return "too_deep"
    if isinstance(value, str) and len(value) > MAX_PROPERTY_STRING:
        return "too_long"
    if isinstance(value, int) and not isinstance(value, bool) and not MIN_INT <= value <= MAX_INT:
        return "out_of_range"
    return None


def flatten_into(
    payload: dict[str, Scalar],
    sources: Mapping[str, Any],
    dropped: list[Dropped],
    *,
    reserved: frozenset[str] = frozenset(),
    limit: int = MAX_PROPERTIES,
) -> None:
    """Add the leaves of ``sources`` to ``payload`` (ours already in it), listing drops.

    ``payload`` keys beyond ``page_url`` count against ``limit``, as model.Payload counts.
    """
    used = len(payload) - ("page_url" in payload)
    ours = frozenset(payload)
    for shown, value in _named_leaves(sources):
        if type(value) is str:  # most leaves: one check, not problem()'s chain
            why = "too_long" if len(value) > MAX_PROPERTY_STRING else None
        elif isinstance(value, dict | list) and not value:
            continue
        else:
            value = number(value)
            why = problem(value)
        if why is not None:
            dropped.append(Dropped(shown[:128], why))
            continue
        name = property_name(shown)
        if name is None:
            dropped.append(Dropped(shown[:128], "invalid_name"))
        elif name in ours or name in reserved or name == "page_url":
            dropped.append(Dropped(shown[:128], "reserved"))
        elif name in payload:
            dropped.append(Dropped(shown[:128], "duplicate_name"))
        elif used >= limit:
            dropped.append(Dropped(shown[:128], "too_many"))
        else:
            payload[name] = value
            used += 1
