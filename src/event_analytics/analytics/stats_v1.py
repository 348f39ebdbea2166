"""Plausible's legacy Stats API v1 (``GET /api/v1/stats/*``) as a translation into the v2
request (one planner, one set of semantics), and the v2 answer back into v1's shapes.
Pure: no I/O (docs/api.md, "Stats API v1").

- ``period``: ``12mo``, ``6mo``, ``month``, ``30d``, ``7d``, ``day`` (v2's shortcuts, the
  ``date`` parameter moving "today"), ``custom`` with ``date=YYYY-MM-DD,YYYY-MM-DD``;
  ``30d`` when absent.
- ``filters``: conditions joined by ``;`` (and), each ``name==value``, ``name!=value``,
  ``name~value`` (contains) or ``name!~value``; ``|`` separates values (or); a ``*`` in
  an ``==``/``!=`` value is a wildcard (``**`` any characters, ``*`` any but ``/``), as
  in goals' page patterns. ``\\|`` is a literal ``|``.
- ``compare=previous_period`` (aggregate): each metric gains ``change``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from event_analytics.analytics.stats_spec import StatsQueryError
from event_analytics.goals import page_regex

Kind = Literal["aggregate", "timeseries", "breakdown", "realtime"]
PERIODS = ("12mo", "6mo", "month", "30d", "7d", "day", "custom")
INTERVALS = ("date", "month")
PARAMS: dict[str, frozenset[str]] = {
    "aggregate": frozenset({"site_id", "period", "date", "metrics", "filters", "compare"}),
    "timeseries": frozenset({"site_id", "period", "date", "metrics", "filters", "interval"}),
    "breakdown": frozenset(
        {"site_id", "period", "date", "metrics", "filters", "property", "limit", "page"}
    ),
    "realtime": frozenset({"site_id"}),
}
MAX_LIMIT = 1000
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# v1's operators; a name holds none of their characters, so the first one ends it.
_OPERATORS = {"!~": "contains_not", "==": "is", "!=": "is_not", "~": "contains"}
_CONDITION = re.compile(r"([^=!~]+)(==|!=|!~|~)(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class V1Request:
    kind: Kind
    body: dict[str, Any]  # the v2 request
    metrics: tuple[str, ...]
    key: str = ""  # breakdown: the answer's key for the property ("browser")


def _error(field: str, message: str) -> StatsQueryError:
    return StatsQueryError(field, message)


def _one(params: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = params.get(name, default)
    return value if value != "" else default


def _split_values(text: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", text)
    return [p.replace("\\|", "|") for p in parts]


def _condition(text: str) -> list[Any]:
    found = _CONDITION.fullmatch(text.strip())
    if not found:
        raise _error("filters", f"Invalid filter `{text}`: expected name==value, name!=value, "
                     "name~value or name!~value")  # fmt: skip
    name, op, value = found.group(1).strip(), _OPERATORS[found.group(2)], found.group(3).strip()
    if not value:
        raise _error("filters", f"Invalid filter `{text}`: no value")
    values = _split_values(value)
    if op in ("is", "is_not") and any("*" in v for v in values):
        patterns = ["(?s)^" + page_regex(v).removeprefix("(?s)") + "$" for v in values]
        return ["matches" if op == "is" else "matches_not", name, patterns]
    return [op, name, values]


def filters(text: str | None) -> list[list[Any]]:
    """v1's ``filters`` parameter as v2 filters."""
    if not text:
        return []
    return [_condition(part) for part in re.split(r"(?<!\\);", text) if part.strip()]


def _period(params: Mapping[str, str]) -> dict[str, Any]:
    period = _one(params, "period", "30d")
    date = _one(params, "date")
    if period not in PERIODS:
        raise _error("period", f"Error parsing `period` parameter: invalid period `{period}`; "
                     f"use one of {', '.join(PERIODS)}")  # fmt: skip
    if period == "custom":
        days = (date or "").split(",")
        if len(days) != 2 or not all(_DAY.fullmatch(d) for d in days):
            raise _error("date", "Error parsing `date` parameter: period custom needs "
                         "date=YYYY-MM-DD,YYYY-MM-DD")  # fmt: skip
        return {"date_range": days}
    if date is None:
        return {"date_range": period}
    if not _DAY.fullmatch(date):
        raise _error("date", "Error parsing `date` parameter: expected YYYY-MM-DD")
    return {"date_range": period, "date": date}


def _metrics(params: Mapping[str, str]) -> tuple[str, ...]:
    raw = _one(params, "metrics", "visitors") or "visitors"
    names = tuple(m.strip() for m in raw.split(","))
    if "" in names:
        raise _error("metrics", "metrics is a comma-separated list of metric names")
    return names


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _one(params, name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise _error(name, f"Error parsing `{name}` parameter: an integer {low}-{high}")
    return int(raw)


def translate(kind: Kind, params: Mapping[str, str]) -> V1Request:
    """The v2 request of a v1 call; StatsQueryError naming the v1 parameter at fault."""
    for name in params:
        if name not in PARAMS[kind]:
            raise _error(name, f"Unknown parameter `{name}` for {kind}")
    site = _one(params, "site_id")
    if not site:
        raise _error("site_id", "Missing site ID. Please provide the required site_id "
                     "parameter with your request.")  # fmt: skip
    if kind == "realtime":  # stats.current_visitors answers it
        return V1Request(kind, {"site_id": site}, ("visitors",))
    metrics = _metrics(params)
    body: dict[str, Any] = {"site_id": site, "metrics": list(metrics), **_period(params),
                            "filters": filters(_one(params, "filters"))}  # fmt: skip
    if kind == "aggregate":
        compare = _one(params, "compare")
        if compare not in (None, "previous_period"):
            raise _error("compare", "Error parsing `compare` parameter: the only option is "
                         "previous_period")  # fmt: skip
        if compare:
            body["include"] = {"comparisons": {"mode": "previous_period"}}
        return V1Request(kind, body, metrics)
    if kind == "timeseries":
        default = "month" if body["date_range"] in ("6mo", "12mo") else "date"
        interval = _one(params, "interval", default)
        if interval not in INTERVALS:
            raise _error("interval", f"Error parsing `interval` parameter: invalid interval "
                         f"`{interval}`; use date or month")  # fmt: skip
        unit = "day" if interval == "date" else "month"
        body |= {"dimensions": [f"time:{unit}"], "include": {"time_labels": True}}
        return V1Request(kind, body, metrics)
    prop = _one(params, "property")
    if not prop:
        raise _error("property", "The `property` parameter is required for breakdown.")
    limit = _int(params, "limit", 100, 1, MAX_LIMIT)
    page = _int(params, "page", 1, 1, 1_000_000)
    body |= {"dimensions": [prop], "pagination": {"limit": limit, "offset": (page - 1) * limit}}
    key = prop.removeprefix("event:props:").removeprefix("event:").removeprefix("visit:")
    return V1Request(kind, body, metrics, key)


def v1_field(v2_field: str) -> str:
    """The v1 parameter a v2 request's field came from."""
    if v2_field == "pagination.offset":
        return "page"
    head = re.split(r"[.\[]", v2_field, maxsplit=1)[0]
    return {"dimensions": "property", "date_range": "period", "pagination": "limit",
            "include": "compare", "order_by": "metrics"}.get(head, head)  # fmt: skip


ZERO = {"visitors": 0, "visits": 0, "pageviews": 0, "events": 0, "views_per_visit": 0.0,
        "bounce_rate": 0, "visit_duration": 0, "percentage": 0.0, "conversion_rate": 0.0,
        "group_conversion_rate": 0.0}  # fmt: skip


def answer(request: V1Request, v2: dict[str, Any]) -> Any:
    """The v2 answer in the v1 shape of ``request.kind``."""
    names = request.metrics
    if request.kind == "aggregate":
        (row,) = v2["results"]
        out: dict[str, Any] = {}
        for i, name in enumerate(names):
            out[name] = {"value": row["metrics"][i]}
            if "comparison" in row:
                out[name]["comparison_value"] = row["comparison"]["metrics"][i]
                out[name]["change"] = row["comparison"]["change"][i]
        return {"results": out}
    if request.kind == "timeseries":
        found = {row["dimensions"][0]: row["metrics"] for row in v2["results"]}
        empty = [ZERO.get(name) for name in names]
        return {"results": [
            {"date": label, **dict(zip(names, found.get(label, empty), strict=True))}
            for label in v2["meta"]["time_labels"]
        ]}  # fmt: skip
    return {"results": [
        {request.key: row["dimensions"][0], **dict(zip(names, row["metrics"], strict=True))}
        for row in v2["results"]
    ]}  # fmt: skip
