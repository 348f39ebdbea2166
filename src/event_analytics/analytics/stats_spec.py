"""A Plausible Stats API v2 request (``POST /api/v2/query``), parsed once into typed values.

Pure: no I/O. Every name is checked against a fixed list here; values stay values (they
reach DuckDB as bound parameters). A request we cannot answer exactly is refused with a
``StatsQueryError`` naming the field, in Plausible's style of message, never answered
approximately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from event_analytics.analytics.spec import _regex_error
from event_analytics.analytics.visits import VISIT_COLUMNS
from event_analytics.errors import FieldError, InvalidInput
from event_analytics.goals import Goal
from event_analytics.model import PROPERTY_NAME_PATTERN

VISIT_METRICS = ("visitors", "visits", "pageviews", "views_per_visit", "bounce_rate",
                 "visit_duration", "events", "percentage")  # fmt: skip
# Goal metrics: they read the site's goals (``with_goals``), by ``event:goal``.
GOAL_METRICS = ("conversion_rate", "group_conversion_rate", "total_revenue", "average_revenue")
REVENUE_METRICS = ("total_revenue", "average_revenue")
GOAL = "event:goal"
EVENT_DIMENSIONS = ("event:page", "event:hostname", "event:name", GOAL)
TIME_DIMENSIONS = ("time", "time:hour", "time:day", "time:week", "time:month")
OPERATORS = ("is", "is_not", "contains", "contains_not", "matches", "matches_not")
SHORTCUTS = ("day", "7d", "28d", "30d", "month", "6mo", "12mo", "year", "all")
TOP_LEVEL = ("site_id", "metrics", "date_range", "dimensions", "filters", "order_by",
             "include", "pagination", "date")  # fmt: skip
MAX_LIMIT = 10_000
MAX_VALUES = 100
MAX_DEPTH = 4
MAX_SPAN = timedelta(days=3 * 366)


class StatsQueryError(InvalidInput):
    """A Stats API request we cannot answer: 400, as Plausible answers one."""

    status, slug, title = 400, "invalid-stats-query", "Invalid Stats API query"

    def __init__(self, where: str, message: str) -> None:
        super().__init__([FieldError("invalid_query", where, message)])
        self.message = message

    def detail(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Condition:
    op: str  # one of OPERATORS
    dimension: str  # event:*, event:props:<name> or visit:*
    values: tuple[str, ...]
    case_sensitive: bool = True


@dataclass(frozen=True, slots=True)
class Done:
    """``has_done`` / ``has_not_done``: the visitor did (not) do an event matching
    ``inner`` (event:* filters only) in a visit counted by this query."""

    negated: bool
    inner: Filter


@dataclass(frozen=True, slots=True)
class Logic:
    op: Literal["and", "or"]
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    inner: Filter


Filter = Condition | Logic | Not | Done


@dataclass(frozen=True, slots=True)
class Comparison:
    """``include.comparisons``: the mode, and for ``custom`` its range as sent and [start, end)."""

    mode: Literal["previous_period", "year_over_year", "custom"]
    date_range: Any = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Include:
    imports: bool = False
    time_labels: bool = False
    total_rows: bool = False
    comparisons: Comparison | None = None


@dataclass(frozen=True, slots=True)
class StatsQuery:
    site_id: str
    metrics: tuple[str, ...]
    date_range: Any  # as sent, for the answer's ``query``
    start: datetime | None  # None for "all": from the first archived hour
    end: datetime
    dimensions: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    order_by: tuple[tuple[str, str], ...] = ()
    include: Include = field(default_factory=Include)
    limit: int = MAX_LIMIT
    offset: int = 0
    goals: tuple[Goal, ...] = ()  # the site's goals (``with_goals``), oldest first

    @property
    def event_scoped(self) -> bool:
        """Whether a dimension or filter reads events (not only visits)."""
        return any(d.startswith("event:") for d in self.dimensions) or any(
            _reads_events(f) for f in self.filters
        )


def _reads_events(f: Filter) -> bool:
    if isinstance(f, Condition):
        return f.dimension.startswith("event:")
    if isinstance(f, Not):
        return _reads_events(f.inner)
    if isinstance(f, Done):  # a condition on the visitor, not on which events count
        return False
    return any(_reads_events(g) for g in f.items)


def _only_events(f: Filter) -> bool:
    if isinstance(f, Condition):
        return f.dimension.startswith("event:")
    if isinstance(f, Not):
        return _only_events(f.inner)
    if isinstance(f, Done):
        return False
    return all(_only_events(g) for g in f.items)


def _is_prop(name: str) -> bool:
    prop = name.removeprefix("event:props:")
    return name.startswith("event:props:") and PROPERTY_NAME_PATTERN.match(prop) is not None


def _dimension(name: Any, where: str, *, filtering: bool) -> str:
    if isinstance(name, str) and (
        name in EVENT_DIMENSIONS or name in VISIT_COLUMNS or _is_prop(name)
        or (not filtering and name in TIME_DIMENSIONS)
    ):  # fmt: skip
        return name
    kind = "filter dimension" if filtering else "dimension"
    raise StatsQueryError(where, f"Invalid {kind} {_show(name)}")


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    raise StatsQueryError(where, "Filter values are strings or integers")


def parse_filter(raw: Any, where: str, depth: int = 0) -> Filter:
    if depth > MAX_DEPTH:
        raise StatsQueryError(where, f"Filters nest at most {MAX_DEPTH} levels")
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise StatsQueryError(where, f"Invalid filter {_show(raw)}")
    op = raw[0]
    if op in ("and", "or"):
        if len(raw) != 2 or not isinstance(raw[1], list) or not raw[1]:
            raise StatsQueryError(where, f"Invalid filter: {op} takes a non-empty list of filters")
        items = tuple(parse_filter(f, f"{where}[1][{i}]", depth + 1) for i, f in enumerate(raw[1]))
        return Logic(op, items)  # type: ignore[arg-type]
    if op == "not":
        if len(raw) != 2:
            raise StatsQueryError(where, "Invalid filter: not takes one filter")
        return Not(parse_filter(raw[1], f"{where}[1]", depth + 1))
    if op in ("has_done", "has_not_done"):
        if len(raw) != 2:
            raise StatsQueryError(where, f"Invalid filter: {op} takes one filter")
        inner = parse_filter(raw[1], f"{where}[1]", depth + 1)
        if not _only_events(inner):
            raise StatsQueryError(f"{where}[1]", f"Invalid filter: {op} takes filters on "
                                  "event:* dimensions only")  # fmt: skip
        return Done(op == "has_not_done", inner)
    if op not in OPERATORS:
        raise StatsQueryError(f"{where}[0]", f"Invalid filter operator '{op}'")
    case_sensitive = True
    if len(raw) == 4:
        modifiers = raw[3]
        if not isinstance(modifiers, dict) or set(modifiers) - {"case_sensitive"}:
            raise StatsQueryError(f"{where}[3]", "Filter modifiers are {\"case_sensitive\": "
                                  "true|false}")  # fmt: skip
        case_sensitive = modifiers.get("case_sensitive", True)
        if not isinstance(case_sensitive, bool):
            raise StatsQueryError(f"{where}[3].case_sensitive", "case_sensitive is true or false")
    if len(raw) not in (3, 4) or not isinstance(raw[2], list) or not raw[2]:
        raise StatsQueryError(where, f"Invalid filter {_show(raw)}: expected "
                              "[operator, dimension, [values]]")  # fmt: skip
    if len(raw[2]) > MAX_VALUES:
        raise StatsQueryError(f"{where}[2]", f"A filter takes at most {MAX_VALUES} values")
    dimension = _dimension(raw[1], f"{where}[1]", filtering=True)
    values = tuple(_value(v, f"{where}[2][{i}]") for i, v in enumerate(raw[2]))
    if op.startswith("matches"):
        for i, pattern in enumerate(values):
            error = _regex_error(pattern)
            if error:
                raise StatsQueryError(f"{where}[2][{i}]", f"Invalid regular expression: {error}")
    return Condition(op, dimension, values, case_sensitive)


def _day(value: str) -> date | None:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None


def _moment(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def _months_back(today: date, months: int) -> datetime:
    index = today.year * 12 + today.month - 1 - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def date_range(raw: Any, now: datetime) -> tuple[datetime | None, datetime]:
    """[start, end) in UTC; whole days, and "7d" etc. end with today (docs/api.md)."""
    today = now.astimezone(UTC).date()
    tomorrow = _midnight(today + timedelta(days=1))
    if isinstance(raw, str):
        days = {"day": 1, "7d": 7, "28d": 28, "30d": 30}
        if raw in days:
            return tomorrow - timedelta(days=days[raw]), tomorrow
        if raw in ("month", "6mo", "12mo"):
            back = {"month": 0, "6mo": 5, "12mo": 11}[raw]
            return _months_back(today, back), _months_back(today, -1)
        if raw == "year":
            return datetime(today.year, 1, 1, tzinfo=UTC), datetime(
                today.year + 1, 1, 1, tzinfo=UTC
            )
        if raw == "all":
            return None, tomorrow
        raise StatsQueryError("date_range", f"Invalid date_range '{raw}'; use one of "
                              f"{', '.join(SHORTCUTS)} or [from, to]")  # fmt: skip
    if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(v, str) for v in raw)):
        raise StatsQueryError("date_range", f"Invalid date_range {_show(raw)}")
    days_ = [_day(v) for v in raw]
    if days_[0] is not None and days_[1] is not None:
        start, end = _midnight(days_[0]), _midnight(days_[1]) + timedelta(days=1)
    else:
        moments = [_moment(v) for v in raw]
        if moments[0] is None or moments[1] is None or None not in days_:
            raise StatsQueryError("date_range", f"Invalid date_range {_show(raw)}: two ISO "
                                  "dates or two ISO 8601 date-times")  # fmt: skip
        start, end = moments[0], moments[1]
    if end <= start:
        raise StatsQueryError("date_range", "Invalid date_range: the end is not after the start")
    if end - start > MAX_SPAN or start.year < 1970:
        raise StatsQueryError("date_range", "Invalid date_range: at most 3 years, from 1970")
    return start, end


def _flag(include: dict[str, Any], name: str) -> bool:
    value = include.get(name, False)
    if not isinstance(value, bool):
        raise StatsQueryError(f"include.{name}", f"include.{name} is true or false")
    return value


COMPARISON_MODES = ("previous_period", "year_over_year", "custom")


def _comparison(raw: Any, now: datetime) -> Comparison | None:
    where = "include.comparisons"
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"mode", "date_range", "match_day_of_week"}:
        raise StatsQueryError(where, "include.comparisons is {mode, date_range, "
                              "match_day_of_week}")  # fmt: skip
    mode = raw.get("mode")
    if mode not in COMPARISON_MODES:
        raise StatsQueryError(f"{where}.mode", f"Invalid comparison mode {_show(mode)}; use "
                              f"one of {', '.join(COMPARISON_MODES)}")  # fmt: skip
    if raw.get("match_day_of_week", False) is not False:
        raise StatsQueryError(f"{where}.match_day_of_week",
                              "match_day_of_week: true is not supported; send false")  # fmt: skip
    if mode != "custom":
        if "date_range" in raw:
            raise StatsQueryError(f"{where}.date_range", "date_range is for mode custom only")
        return Comparison(mode)
    if not (isinstance(raw.get("date_range"), list) and len(raw["date_range"]) == 2):
        raise StatsQueryError(f"{where}.date_range", "mode custom needs date_range "
                              "[from, to], e.g. [\"2024-01-01\", \"2024-01-31\"]")  # fmt: skip
    try:
        start, end = date_range(raw["date_range"], now)
    except StatsQueryError as exc:
        raise StatsQueryError(f"{where}.date_range", exc.message) from None
    return Comparison("custom", raw["date_range"], start, end)


def _include(raw: Any, has_time: bool, now: datetime) -> Include:
    if raw is None:
        return Include()
    if not isinstance(raw, dict):
        raise StatsQueryError("include", "include is an object")
    for key in raw:
        if key not in ("imports", "time_labels", "total_rows", "comparisons"):
            raise StatsQueryError(f"include.{key}", f"Invalid include key '{key}'")
    out = Include(_flag(raw, "imports"), _flag(raw, "time_labels"), _flag(raw, "total_rows"),
                  _comparison(raw.get("comparisons"), now))  # fmt: skip
    if out.time_labels and not has_time:
        raise StatsQueryError("include.time_labels",
                              "Invalid include.time_labels: requires a time dimension")  # fmt: skip
    return out


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list):
        raise StatsQueryError(name, f"{name} is a list")
    return value


def _metrics(body: dict[str, Any]) -> tuple[str, ...]:
    raw = body.get("metrics")
    if not isinstance(raw, list) or not raw:
        raise StatsQueryError("metrics", "metrics is a non-empty list of metric names")
    for i, name in enumerate(raw):
        if name not in VISIT_METRICS and name not in GOAL_METRICS:
            raise StatsQueryError(f"metrics[{i}]", f"Unknown metric {_show(name)}")
    if len(set(raw)) != len(raw):
        raise StatsQueryError("metrics", "Each metric at most once")
    return tuple(raw)


def _pagination(raw: Any) -> tuple[int, int]:
    if raw is None:
        return MAX_LIMIT, 0
    if not isinstance(raw, dict) or set(raw) - {"limit", "offset"}:
        raise StatsQueryError("pagination", "pagination is {limit, offset}")
    limit, offset = raw.get("limit", MAX_LIMIT), raw.get("offset", 0)
    if not (type(limit) is int and 1 <= limit <= MAX_LIMIT):
        raise StatsQueryError("pagination.limit", f"pagination.limit is 1-{MAX_LIMIT}")
    if not (type(offset) is int and 0 <= offset <= 10_000_000):
        raise StatsQueryError("pagination.offset", "pagination.offset is 0 or more")
    return limit, offset


def parse_query(body: Any, now: datetime) -> StatsQuery:
    """The request, checked field by field; StatsQueryError names the first bad one."""
    if not isinstance(body, dict):
        raise StatsQueryError("", "The query is a JSON object")
    for key in body:
        if key not in TOP_LEVEL:
            raise StatsQueryError(key, f"Invalid query key '{key}'")
    site = body.get("site_id")
    if not isinstance(site, str) or not site or len(site) > 253:
        raise StatsQueryError("site_id", "site_id is the site's domain, e.g. example.com")
    metrics = _metrics(body)
    dimensions = tuple(
        _dimension(d, f"dimensions[{i}]", filtering=False)
        for i, d in enumerate(_list(body, "dimensions"))
    )
    if len(set(dimensions)) != len(dimensions):
        raise StatsQueryError("dimensions", "Each dimension at most once")
    times = [d for d in dimensions if d.startswith("time")]
    if len(times) > 1:
        raise StatsQueryError("dimensions", "At most one time dimension")
    filters = tuple(parse_filter(f, f"filters[{i}]") for i, f in enumerate(_list(body, "filters")))
    if "date" in body:
        day = _day(body["date"]) if isinstance(body["date"], str) else None
        if day is None:
            raise StatsQueryError("date", "date is an ISO date, e.g. 2024-01-31")
        now = _midnight(day) + timedelta(hours=12)
    if "date_range" not in body:
        raise StatsQueryError("date_range", 'date_range is required, e.g. "7d"')
    start, end = date_range(body["date_range"], now)
    order_by = []
    for i, term in enumerate(_list(body, "order_by")):
        if not (isinstance(term, list) and len(term) == 2 and term[1] in ("asc", "desc")):
            raise StatsQueryError(f"order_by[{i}]", "order_by entries are [name, asc|desc]")
        if term[0] not in metrics and term[0] not in dimensions:
            raise StatsQueryError(f"order_by[{i}]", f"Invalid order_by entry {_show(term[0])}: "
                                  "not a metric or dimension of this query")  # fmt: skip
        order_by.append((str(term[0]), str(term[1])))
    limit, offset = _pagination(body.get("pagination"))
    query = StatsQuery(
        site_id=site, metrics=metrics, date_range=body["date_range"], start=start, end=end,
        dimensions=dimensions, filters=filters, order_by=tuple(order_by),
        include=_include(body.get("include"), bool(times), now), limit=limit, offset=offset,
    )  # fmt: skip
    if "views_per_visit" in metrics and query.event_scoped:
        where = "metrics"
        raise StatsQueryError(where, "Metric `views_per_visit` cannot be queried with event:* "
                              "dimensions or filters")  # fmt: skip
    if "percentage" in metrics and not dimensions:
        raise StatsQueryError("metrics", "Metric `percentage` can only be queried with dimensions")
    return query


def goal_conditions(f: Filter) -> list[Condition]:
    """The ``event:goal`` conditions anywhere in ``f``."""
    if isinstance(f, Condition):
        return [f] if f.dimension == GOAL else []
    if isinstance(f, Logic):
        return [c for g in f.items for c in goal_conditions(g)]
    return goal_conditions(f.inner)


def name_holds(c: Condition, name: str) -> bool:
    """Whether a goal's display name passes the (positive form of the) condition ``c``:
    how an ``event:goal`` filter picks goals when the query is not grouped by goal."""
    base = c.op.removesuffix("_not")
    if base == "matches":
        flags = 0 if c.case_sensitive else re.IGNORECASE
        return any(re.search(v, name, flags) for v in c.values)
    fold = (lambda s: s) if c.case_sensitive else str.lower
    if base == "is":
        return fold(name) in {fold(v) for v in c.values}
    return any(fold(v) in fold(name) for v in c.values)


def with_goals(q: StatsQuery, goals: list[Goal] | tuple[Goal, ...]) -> StatsQuery:
    """``q`` with its site's goals, checked against them: a goal named by an ``is``
    filter exists, and the goal metrics have an ``event:goal`` filter or dimension."""
    from dataclasses import replace

    names = {g.display_name for g in goals}
    folded = {n.lower() for n in names}
    conditions = [(i, c) for i, f in enumerate(q.filters) for c in goal_conditions(f)]
    for i, c in conditions:
        if c.op.startswith("matches"):
            # Goal names are matched here, in Python (name_holds): a pattern RE2 takes
            # but Python's re does not (``\x{41}``, ``\pN``) is refused, not a 500.
            for pattern in c.values:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise StatsQueryError(f"filters[{i}]", "Invalid regular expression for "
                                          f"event:goal: {exc}") from None  # fmt: skip
        if c.op != "is":
            continue
        for value in c.values:
            if (value if c.case_sensitive else value.lower()) not in (
                names if c.case_sensitive else folded
            ):
                message = f"The goal `{value}` is not configured for this site"
                raise StatsQueryError(f"filters[{i}]", message + " (PUT /api/v1/sites/goals)")
    if not conditions and GOAL not in q.dimensions:
        for i, name in enumerate(q.metrics):
            if name in GOAL_METRICS:
                raise StatsQueryError(f"metrics[{i}]", f"Metric `{name}` can only be queried "
                                      "with event:goal filters or dimensions")  # fmt: skip
    return replace(q, goals=tuple(goals))
