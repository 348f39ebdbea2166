"""The columns derived from an event record: one SQL definition, computed once per event
when an hour is compacted (stored in its Parquet copy) and at read time for the JSONL and
for copies written before they existed. No I/O.

Every expression reads only the record's own columns as the analytics engine types them
(``event_type`` VARCHAR, ``payload`` JSON, ``page_url`` = ``payload->>'page_url'``), so a
column stored in a copy and the same column computed from the JSONL are the same value:
the one text below is what both run. The visit and Stats API queries read these columns
instead of parsing each event's payload and page URL again (benchmarks/analytics_bench.py:
parsing them was a third of a visit query's time).

``SCHEMA_VERSION`` names this list in a copy's record (``compact.Covered.schema``): a copy
of an older version holds only the record's columns, and the reader computes the rest.
"""

from __future__ import annotations

from event_analytics import sites
from event_analytics.revenue import SQL_TYPE, amount_sql, currency_sql

# 1: the record's columns only; 2: and DERIVED.
SCHEMA_VERSION = 2

UTM = ("utm_medium", "utm_source", "utm_campaign", "utm_content", "utm_term")
# The payload fields a visit takes from its first event (and ``interactive``, which says
# whether an event keeps a visit from bouncing), each as column ``f_<name>``.
FIELDS = ("interactive", "source", "referrer", *UTM, "device", "browser", "os", "country")

# (name, DuckDB type, expression over one record).
DERIVED: tuple[tuple[str, str, str], ...] = (
    ("site", "VARCHAR", sites.SITE_SQL),
    ("path", "VARCHAR", sites.path_sql("page_url")),
    ("hostname", "VARCHAR", sites.host_sql("page_url")),
    # Plausible's event:name: page views are "pageview".
    (
        "event_name",
        "VARCHAR",
        "(CASE WHEN event_type = 'page_view' THEN 'pageview' "
        "ELSE coalesce(payload->>'event_name', event_type) END)",
    ),
    # The name goals match (goals.event_name_of): a string ``event_name``, else the type.
    (
        "goal_event_name",
        "VARCHAR",
        "(CASE WHEN json_type(payload->'event_name') = 'VARCHAR' "
        "THEN payload->>'event_name' ELSE event_type END)",
    ),
    ("revenue_amount", SQL_TYPE, amount_sql("payload")),
    ("revenue_currency", "VARCHAR", currency_sql("payload")),
    *((f"f_{name}", "VARCHAR", f"(payload->>'{name}')") for name in FIELDS),
)
NAMES = tuple(name for name, _, _ in DERIVED)


def select_sql() -> str:
    """The derived columns as a SELECT list over a relation of the record's columns."""
    return ", ".join(f"CAST({sql} AS {kind}) AS {name}" for name, kind, sql in DERIVED)


def nulls_sql() -> str:
    """The derived columns as typed NULLs (a relation with no rows)."""
    return ", ".join(f"NULL::{kind} AS {name}" for name, kind, _ in DERIVED)
