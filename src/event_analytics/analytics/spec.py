"""What an analytics question may ask: funnels, retention and breakdowns, validated.

Pure data, no I/O but one: a regex is checked by an in-memory DuckDB, the engine that
will run it. The API, the CLI and the tests build these from JSON. Every name a
query can use is checked here against a fixed list; values stay values (they reach
DuckDB as bound parameters, see ``sql.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal

import duckdb
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from event_analytics.model import EVENT_TYPE_PATTERN, PROPERTY_NAME_PATTERN, Timestamp
from event_analytics.timebucket import to_utc

MAX_STEPS = 20
MAX_WINDOW_S = 90 * 86400
MAX_RANGE = timedelta(days=366)  # one query reads at most a year of hour files
MAX_LIMIT = 10_000
MAX_VALUES = 100  # values in one filter
MAX_FILTER_DEPTH = 4
MAX_COHORTS = 400
SHORTHANDS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
              "30d": timedelta(days=30)}  # fmt: skip
OPERATORS = ("is", "is_not", "contains", "matches")
TIME_DIMENSIONS = ("time:minute", "time:hour", "time:day", "time:week", "time:month")
PLAIN_DIMENSIONS = ("event_type", "page_url")


def _invalid(code: str, message: str, **context: Any) -> PydanticCustomError:
    # Rendered here with str.format: pydantic fills in a plain ``{name}`` from the context
    # but leaves ``{name!r}`` as it is, and a client got the raw template. No context is
    # passed on, so a value that holds braces is never expanded a second time.
    return PydanticCustomError(code, message.format(**context))


@dataclass(frozen=True, slots=True)
class Field_:
    """A column of an event a filter, breakdown or dimension reads."""

    kind: Literal["event_type", "page_url", "property"]
    name: str = ""  # the property name when kind == "property"

    @property
    def label(self) -> str:
        return f"property:{self.name}" if self.kind == "property" else self.kind


def parse_field(raw: Any, *, bare_is_property: bool) -> Field_:
    """``event_type``, ``page_url`` or ``property:<name>``; in a step's ``where`` a bare
    name is a payload property (``page_url`` is one too)."""
    if not isinstance(raw, str):
        raise _invalid("invalid_field", "a field name is a string")
    if raw in PLAIN_DIMENSIONS and not (bare_is_property and raw == "event_type"):
        return Field_(raw)  # type: ignore[arg-type]
    name = raw.removeprefix("property:")
    if (raw.startswith("property:") or bare_is_property) and PROPERTY_NAME_PATTERN.match(name):
        return Field_("property", name)
    raise _invalid(
        "unknown_field",
        "unknown field {field!r}: use event_type, page_url or property:<name> "
        "(1-64 of [A-Za-z0-9_.-], starting with a letter)",
        field=raw,
    )


@lru_cache(maxsize=256)
def _regex_error(pattern: str) -> str | None:
    # DuckDB runs the regex (RE2), so DuckDB is the judge of whether it is valid.
    try:
        duckdb.connect().execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
    except duckdb.Error as exc:
        return str(exc).split("\n", 1)[0]
    return None


@dataclass(frozen=True, slots=True)
class Condition:
    op: Literal["is", "is_not", "contains", "matches"]
    field: Field_
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Not:
    inner: Filter


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Filter, ...]


Filter = Condition | Not | Or


def _value_text(value: Any) -> str:
    # Properties are compared as the text DuckDB reads from the JSON: true, 5, "x" -> x.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    raise _invalid("invalid_filter_value", "filter values are strings, integers or booleans")


def parse_filter(raw: Any, *, bare_is_property: bool, depth: int = 0) -> Filter:
    """One filter: ``[op, field, [values]]``, ``["not", f]`` or ``["or", [f, ...]]``."""
    if depth > MAX_FILTER_DEPTH:
        raise _invalid("filter_too_deep", "filters nest at most {n} levels", n=MAX_FILTER_DEPTH)
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise _invalid(
            "invalid_filter", 'a filter is [op, field, [values]], ["not", f] or ["or", [f, ...]]'
        )
    op = raw[0]
    if op == "not" and len(raw) == 2:
        return Not(parse_filter(raw[1], bare_is_property=bare_is_property, depth=depth + 1))
    if op == "or" and len(raw) == 2 and isinstance(raw[1], list) and raw[1]:
        items = tuple(
            parse_filter(f, bare_is_property=bare_is_property, depth=depth + 1) for f in raw[1]
        )
        return Or(items)
    if op not in OPERATORS:
        raise _invalid(
            "unknown_operator",
            "unknown filter operator {op!r}: use is, is_not, contains, matches, not or or",
            op=op,
        )
    if len(raw) != 3 or not isinstance(raw[2], list) or not 1 <= len(raw[2]) <= MAX_VALUES:
        raise _invalid(
            "invalid_filter", "{op} takes a field and a list of 1-{n} values", op=op, n=MAX_VALUES
        )
    field = parse_field(raw[1], bare_is_property=bare_is_property)
    values = tuple(_value_text(v) for v in raw[2])
    if op == "matches":
        for pattern in values:
            error = _regex_error(pattern)
            if error:
                raise _invalid(
                    "invalid_regex", "invalid regex {pattern!r}: {error}", pattern=pattern,
                    error=error,
                )  # fmt: skip
    return Condition(op, field, values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class FilterList:
    """Filters as sent (echoed back in answers) and as parsed, once, when the spec is made:
    the SQL builders read ``parsed`` and never see the raw lists."""

    raw: tuple[Any, ...]
    parsed: tuple[Filter, ...]


def _parse_filters(value: Any, max_items: int, *, bare_is_property: bool) -> FilterList:
    if isinstance(value, FilterList):
        return value
    if not isinstance(value, list | tuple):
        raise _invalid("invalid_filters", "filters are a list of filters")
    if len(value) > max_items:
        raise _invalid("too_long", "at most {n} filters", n=max_items)
    parsed = tuple(parse_filter(f, bare_is_property=bare_is_property) for f in value)
    return FilterList(tuple(value), parsed)


MAX_FILTERS = 20  # in one query


def _step_filters(value: Any) -> FilterList:
    return _parse_filters(value, MAX_FILTERS, bare_is_property=True)


def _query_filters(value: Any) -> FilterList:
    return _parse_filters(value, MAX_FILTERS, bare_is_property=False)


# Answers echo the filters as they were sent; OpenAPI describes them as sent.
_AS_SENT = PlainSerializer(lambda f: list(f.raw), return_type=list[Any])
_SCHEMA = WithJsonSchema({"type": "array", "items": {}, "maxItems": MAX_FILTERS})
StepFilters = Annotated[FilterList, BeforeValidator(_step_filters), _AS_SENT, _SCHEMA]
QueryFilters = Annotated[FilterList, BeforeValidator(_query_filters), _AS_SENT, _SCHEMA]
NO_FILTERS = FilterList((), ())


def _glob_ok(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise _invalid("invalid_page_url", "page_url is 1-2048 characters, * matches any run")
    return value


class Step(BaseModel):
    """An event selector: type, optionally page URL (exact or ``*`` glob) and properties."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: str = Field(pattern=EVENT_TYPE_PATTERN)
    page_url: Annotated[str, BeforeValidator(_glob_ok)] | None = None
    where: StepFilters = Field(
        default=NO_FILTERS, description="Property filters, e.g. [['is', 'plan', ['pro', 'team']]]"
    )

    @property
    def filters(self) -> tuple[Filter, ...]:
        """``where``, parsed when the step was made."""
        return self.where.parsed


def _utc(value: datetime) -> datetime:
    return to_utc(value)


def parse_range(raw: Any, now: datetime) -> tuple[datetime, datetime]:
    """A ``[from, to]`` pair of ISO times or a shorthand ending now (``1h``...``30d``)."""
    if isinstance(raw, str):
        if raw not in SHORTHANDS:
            raise _invalid(
                "invalid_date_range",
                "date_range is [from, to] or one of {names}",
                names=", ".join(SHORTHANDS),
            )
        return now - SHORTHANDS[raw], now
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise _invalid("invalid_date_range", "date_range is [from, to] or a shorthand like 7d")
    start, end = (_parse_time(v) for v in raw)
    return start, end


def _parse_time(value: Any) -> datetime:
    from pydantic import TypeAdapter, ValidationError

    try:
        return to_utc(TypeAdapter(Timestamp).validate_python(value))
    except (ValidationError, OverflowError):
        raise _invalid(
            "invalid_timestamp", "times are ISO 8601, e.g. 2026-11-28T00:00:00Z"
        ) from None


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def check_range(start: datetime, end: datetime) -> None:
    if not (start >= EARLIEST and end <= LATEST):
        raise _invalid("out_of_range", "times lie between 1970 and 9000")
    if end <= start:
        raise _invalid("empty_range", "'to' must be after 'from'")
    if end - start > MAX_RANGE:
        raise _invalid("range_too_long", "a range spans at most {days} days", days=MAX_RANGE.days)


class _Ranged(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: Timestamp = Field(alias="from")
    end: Timestamp = Field(alias="to")

    @model_validator(mode="after")
    def _range(self) -> Any:
        try:
            start, end = _utc(self.start), _utc(self.end)
        except OverflowError:
            raise _invalid("out_of_range", "times lie between 1970 and 9000") from None
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        check_range(self.start, self.end)
        return self


def _breakdown(value: str | None) -> str | None:
    if value is None:
        return None
    return parse_field(value, bare_is_property=False).label


class FunnelSpec(_Ranged):
    steps: list[Step] = Field(min_length=2, max_length=MAX_STEPS)
    window_s: int = Field(default=86400, gt=0, le=MAX_WINDOW_S)
    order: Literal["ordered", "strict", "any"] = "ordered"
    breakdown: Annotated[str | None, BeforeValidator(_breakdown)] = None


class RetentionSpec(_Ranged):
    period: Literal["hour", "day", "week", "month"] = "day"
    periods: int = Field(default=7, ge=1, le=60)
    cohort_event: Step
    return_event: Step
    type: Literal["first_time", "recurring"] = "first_time"

    @model_validator(mode="after")
    def _cohorts(self) -> RetentionSpec:
        from event_analytics.analytics.periods import Period

        count = len(Period(self.period).starts(self.start, self.end))
        if count > MAX_COHORTS:
            raise _invalid(
                "too_many_cohorts",
                "{count} {period} cohorts; at most {n}: shorten the range or use a longer period",
                count=count, period=self.period, n=MAX_COHORTS,
            )  # fmt: skip
        return self


class QuerySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    date_range: Any = Field(description='[from, to] or "1h", "24h", "7d", "30d"')
    metrics: list[Literal["events", "visitors", "events_per_visitor"]] = Field(
        min_length=1, max_length=3
    )
    dimensions: list[str] = Field(default_factory=list, max_length=4)
    filters: QueryFilters = NO_FILTERS
    order_by: list[tuple[str, Literal["asc", "desc"]]] = Field(default_factory=list, max_length=8)
    pagination: Pagination = Field(default_factory=lambda: Pagination())

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            if name == "user_id":
                raise _invalid(
                    "unknown_dimension", "no per-user listings: user_id is not a dimension"
                )
            if name not in TIME_DIMENSIONS:
                try:
                    name = parse_field(name, bare_is_property=False).label
                except PydanticCustomError:
                    raise _invalid(
                        "unknown_dimension",
                        "unknown dimension {name!r}: use event_type, page_url, property:<name> "
                        "or time:minute|hour|day|week|month",
                        name=name,
                    ) from None
            out.append(name)
        if len(set(out)) != len(out):
            raise _invalid("duplicate_dimension", "each dimension at most once")
        if sum(d.startswith("time:") for d in out) > 1:
            raise _invalid("duplicate_dimension", "at most one time dimension")
        return out

    @property
    def parsed_filters(self) -> tuple[Filter, ...]:
        """``filters``, parsed when the spec was made."""
        return self.filters.parsed

    @field_validator("date_range")
    @classmethod
    def _date_range(cls, value: Any) -> Any:
        check_range(*parse_range(value, utcnow()))
        return value

    @model_validator(mode="after")
    def _order(self) -> QuerySpec:
        names = set(self.metrics) | set(self.dimensions)
        for name, _ in self.order_by:
            if name not in names:
                raise _invalid(
                    "invalid_order_by",
                    "order_by {name!r} is neither one of this query's metrics nor dimensions",
                    name=name,
                )
        if len(set(self.metrics)) != len(self.metrics):
            raise _invalid("duplicate_metric", "each metric at most once")
        return self

    def time_range(self, now: datetime) -> tuple[datetime, datetime]:
        start, end = parse_range(self.date_range, now)
        check_range(start, end)
        return start, end


class Pagination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(default=100, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=10_000_000)


QuerySpec.model_rebuild()


def utcnow() -> datetime:
    return datetime.now(UTC)


def glob_to_like(pattern: str) -> str:
    """A ``*`` glob as a LIKE pattern with ``\\`` as escape (only ``*`` is special)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")
