"""Goals in the Stats API planner: an event's goals as SQL, the query's revenue currency,
and revenue as Plausible writes it (docs/api.md, "Goals in the Stats API").

- ``event:goal`` as a **dimension**: one row per (event, goal it completes), named by the
  goal's display name; a filter on ``event:goal`` then reads that row's goal.
- ``event:goal`` in a **filter** of a query not grouped by goal: the event completes at
  least one of the site's goals whose display name passes the condition.
- **Revenue** of a row: the exact sum of the amounts of its events whose currency is the
  goal's (grouped by goal: the row's goal; else the one currency of every goal the
  ``event:goal`` filters name, none when they name goals of several currencies or
  without one). An amount in another currency is not summed: it is counted in
  ``meta.revenue_dropped_events``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from event_analytics import goals as goal_rules
from event_analytics.analytics import visits
from event_analytics.analytics.sql import Params
from event_analytics.analytics.stats_spec import (
    GOAL,
    Condition,
    Filter,
    StatsQuery,
    goal_conditions,
    name_holds,
)
from event_analytics.goals import Goal
from event_analytics.revenue import amount_sql, currency_sql

# An event's name as goals see it (goals.event_name_of): a string ``event_name``, else its type.
NAME_SQL = (
    "(CASE WHEN json_type(payload->'event_name') = 'VARCHAR' "
    "THEN payload->>'event_name' ELSE event_type END)"
)
AMOUNT_SQL = amount_sql("payload")
CURRENCY_SQL = currency_sql("payload")


@dataclass(frozen=True, slots=True)
class EventExprs:
    """An event row's derived values as SQL: expressions over ``vev``'s columns, or (over
    a visit cache entry, ``CACHED``) the columns its fill computed them into once, with
    these same expressions."""

    page: str = visits.EVENT_SQL["event:page"]
    hostname: str = visits.EVENT_SQL["event:hostname"]
    name: str = visits.EVENT_SQL["event:name"]  # event:name
    goal_name: str = NAME_SQL  # the name goals match
    amount: str = AMOUNT_SQL
    currency: str = CURRENCY_SQL

    def dimension(self, name: str) -> str:
        """An ``event:page|hostname|name`` dimension's SQL."""
        return str(getattr(self, name.removeprefix("event:")))


EXPRS = EventExprs()
CACHED = EventExprs(*(f"e_{f.name}" for f in fields(EventExprs)))


def derived_sql() -> str:
    """The select list that computes ``CACHED``'s columns from a ``vev`` row."""
    return ", ".join(
        f"{getattr(EXPRS, f.name)} AS {getattr(CACHED, f.name)}" for f in fields(EventExprs)
    )


def goal_sql(p: Params, goal: Goal, exprs: EventExprs = EXPRS) -> str:
    """Whether the event row completes ``goal`` (goals.sql_condition, its values bound)."""
    # Placeholders without "?" (the path expression's regular expressions hold some).
    sql, values = goal_rules.sql_condition(
        goal, type_sql="\x00T", name_sql="\x00N", path_sql="\x00P"
    )
    for value in values:
        sql = sql.replace("?", p.bind(value), 1)
    return (
        sql.replace("\x00T", "event_type")
        .replace("\x00N", exprs.goal_name)
        .replace("\x00P", exprs.page)
    )


def any_goal_sql(
    p: Params, c: Condition, goals: tuple[Goal, ...], exprs: EventExprs = EXPRS
) -> str:
    """An ``event:goal`` condition on an event row not grouped by goal."""
    picked = [g for g in goals if name_holds(c, g.display_name)]
    either = " OR ".join(goal_sql(p, g, exprs) for g in picked)
    positive = f"({either})" if picked else "false"
    return f"(NOT {positive})" if c.op.endswith("_not") else positive


def goal_rows_sql(
    p: Params, goals: tuple[Goal, ...], source: str, exprs: EventExprs = EXPRS
) -> str:
    """``source``'s rows once per goal they complete, with ``goal_name`` and ``goal_cur``."""
    parts = [
        f"SELECT *, {p.bind(g.display_name)}::VARCHAR AS goal_name, "
        f"{p.bind(g.currency)}::VARCHAR AS goal_cur FROM {source} "
        f"WHERE {goal_sql(p, g, exprs)}"
        for g in goals
    ]
    empty = (
        f"SELECT *, NULL::VARCHAR AS goal_name, NULL::VARCHAR AS goal_cur FROM {source} WHERE false"
    )
    return "\nUNION ALL ".join(parts) or empty


def query_currency(q: StatsQuery) -> str | None:
    """The currency revenue is summed in when the query is not grouped by goal."""
    named: set[str | None] = set()
    for f in q.filters:
        for c in goal_conditions(f):
            if not c.op.endswith("_not"):
                named |= {g.currency for g in q.goals if name_holds(c, g.display_name)}
    return next(iter(named)) if len(named) == 1 else None


def row_currency(q: StatsQuery, goal_name: str) -> str | None:
    """A goal row's currency: its goals' one currency (display names may repeat)."""
    found = {g.currency for g in q.goals if g.display_name == goal_name}
    return next(iter(found)) if len(found) == 1 else None


def strip_for_totals(filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
    """The filters the conversion rates' denominators keep: Plausible drops top-level
    ``event:goal`` and ``event:props:*`` conditions."""
    return tuple(
        f
        for f in filters
        if not (
            isinstance(f, Condition)
            and (f.dimension == GOAL or f.dimension.startswith("event:props:"))
        )
    )


# Plausible answers revenue through ex_money (CLDR, locale "en"): the symbol, then the
# amount; ``short`` with one fractional digit and K/M/B/T, ``long`` with the currency's
# digits. Symbols of the common currencies; the others are written with their code.
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹", "CNY": "CN¥",
           "CAD": "CA$", "AUD": "A$", "BRL": "R$", "KRW": "₩", "MXN": "MX$", "ILS": "₪",
           "NZD": "NZ$", "HKD": "HK$", "TWD": "NT$", "VND": "₫", "PHP": "₱"}  # fmt: skip
NO_CENTS = frozenset(("JPY", "KRW", "VND", "CLP", "ISK", "HUF", "TWD"))
_SCALES = (
    (Decimal(10**12), "T"),
    (Decimal(10**9), "B"),
    (Decimal(10**6), "M"),
    (Decimal(1000), "K"),
)


def _written(amount: Decimal, currency: str, digits: int, suffix: str = "") -> str:
    text = f"{abs(amount).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_EVEN):,}{suffix}"
    symbol = SYMBOLS.get(currency)
    body = f"{symbol}{text}" if symbol else f"{currency}\u00a0{text}"
    return f"-{body}" if amount < 0 else body


def money(amount: Decimal, currency: str) -> dict[str, Any]:
    """``{"short": "$1.3K", "long": "$1,322.22", "value": 1322.22, "currency": "USD"}``."""
    digits = 0 if currency in NO_CENTS else 2
    short = _written(amount, currency, 1)
    for scale, suffix in _SCALES:
        if abs(amount) >= scale:
            short = _written(amount / scale, currency, 1, suffix)
            break
    return {
        "short": short,
        "long": _written(amount, currency, digits),
        "value": float(amount),
        "currency": currency,
    }
