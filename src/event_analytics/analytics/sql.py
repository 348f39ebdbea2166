"""SQL fragments shared by the plans: bound parameters, filters, step matches, the source.

Every value goes through ``Params.bind`` (a named DuckDB parameter); the only names put
into SQL text are column names chosen here from fixed lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from event_analytics.analytics.spec import Condition, Field_, Filter, Not, Or, Step, glob_to_like
from event_analytics.archive import derived, record

if TYPE_CHECKING:
    from event_analytics.analytics.snapshot import Sources

# The archive record as DuckDB reads it: its codec's column list (archive/record.py).
COLUMNS = dict(record.COLUMNS)
# The columns of a Parquet copy after its id, user and time, in ``events``' order.
BASE_COLUMNS = "event_type, page_url, payload::JSON AS payload, received_at"


class Params:
    """Named parameters collected while SQL text is built."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"${name}"


def source(params: Params, files: Sources, where: str | None = None) -> str:
    """A SELECT of the ``events`` columns from Parquet copies and JSONL files: the
    record's columns and the derived ones (``derived.DERIVED``), read from a copy that
    holds them, else computed here by the same SQL compaction ran. ``where`` (SQL made by
    the caller, on the record's columns) keeps only the rows it holds for, before any
    column is converted or derived.

    ``ignore_errors`` reads a line a live archiver is appending at this moment as a row
    of NULLs instead of failing the query; ``event_id IS NOT NULL`` drops it. (A torn
    tail left by a crash is never read at all: see ``snapshot.hour_files``.)
    """
    parts = []
    only = f" WHERE {where}" if where is not None else ""
    if files.parquet:
        parts.append(
            f'SELECT event_id, user_id, "timestamp" AS ts, {BASE_COLUMNS}, '
            f"{', '.join(derived.NAMES)} FROM read_parquet({params.bind(files.parquet)}){only}"
        )
    if files.parquet_old:
        parts.append(
            f'SELECT *, {derived.select_sql()} FROM (SELECT event_id, user_id, "timestamp" AS '
            f"ts, {BASE_COLUMNS} FROM read_parquet({params.bind(files.parquet_old)}){only})"
        )
    if files.jsonl:
        parts.append(
            f'SELECT *, {derived.select_sql()} FROM (SELECT event_id, user_id, "timestamp" AS '
            "ts, event_type, payload->>'page_url' AS page_url, payload, received_at "
            f"FROM read_json({params.bind(files.jsonl)}, format='newline_delimited', "
            f"columns={params.bind(COLUMNS)}, ignore_errors=true) WHERE event_id IS NOT NULL "
            f"AND {where or 'true'})"
        )
    if not parts:
        return (
            "SELECT NULL::VARCHAR AS event_id, NULL::VARCHAR AS user_id, "
            "NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS event_type, NULL::VARCHAR AS page_url, "
            f"NULL::JSON AS payload, NULL::TIMESTAMPTZ AS received_at, {derived.nulls_sql()} "
            "WHERE false"
        )
    return " UNION ALL ".join(parts)


def field_sql(params: Params, field: Field_) -> str:
    if field.kind == "event_type":
        return "event_type"
    if field.kind == "page_url":
        return "page_url"
    return f"(payload->>{params.bind(field.name)})"


def filter_sql(params: Params, f: Filter) -> str:
    """A filter as a never-NULL boolean: a missing property is not equal to any value."""
    if isinstance(f, Not):
        return f"(NOT {filter_sql(params, f.inner)})"
    if isinstance(f, Or):
        return "(" + " OR ".join(filter_sql(params, item) for item in f.items) + ")"
    return _condition_sql(params, f)


def _condition_sql(params: Params, c: Condition) -> str:
    column = field_sql(params, c.field)
    if c.op in ("is", "is_not"):
        listed = ", ".join(params.bind(v) for v in c.values)
        if c.op == "is":
            return f"coalesce({column} IN ({listed}), false)"
        return f"coalesce({column} NOT IN ({listed}), true)"
    function = "contains" if c.op == "contains" else "regexp_matches"
    either = " OR ".join(f"{function}({column}, {params.bind(v)})" for v in c.values)
    return f"coalesce({either}, false)"


def filters_sql(params: Params, filters: tuple[Filter, ...] | list[Filter]) -> str:
    return " AND ".join(filter_sql(params, f) for f in filters) or "true"


def step_sql(params: Params, step: Step) -> str:
    """Whether an event matches a step: its type, page URL (exact or glob) and filters.

    The rest is a CASE branch on the type: DuckDB evaluates both sides of an AND in a
    projection for every row, but a CASE branch only for the rows it selects, so a
    filter's payload is parsed for the step's events alone (a third of a 10 M-event
    funnel's scan, benchmarks/scale_bench.py)."""
    kind = f"event_type = {params.bind(step.event_type)}"
    parts = []
    if step.page_url is not None:
        if "*" in step.page_url:
            parts.append(f"coalesce(page_url LIKE {params.bind(glob_to_like(step.page_url))} "
                         "ESCAPE '\\', false)")  # fmt: skip
        else:
            parts.append(f"coalesce(page_url = {params.bind(step.page_url)}, false)")
    parts.extend(filter_sql(params, f) for f in step.filters)
    if not parts:
        return f"({kind})"
    return f"(CASE WHEN {kind} THEN {' AND '.join(parts)} ELSE false END)"
