"""Comparisons (``include.comparisons``): the other range, and each metric's change, as
Plausible's Stats API v2 computes them (docs/api.md, "Comparisons"). Pure.

- ``previous_period``: as long as the query's range, ending where it starts.
- ``year_over_year``: the same range a year earlier (29 February is the 28th).
- ``custom``: the range sent.

A result row is matched with the comparison's row of the same dimension values; a time
dimension is matched by position (the i-th bucket of one range with the i-th of the
other). A row the other range lacks compares with zeros.

The change (Plausible's ``Compare.calculate_change``): ``bounce_rate`` the difference in
points (none when the old rate is 0), ``conversion_rate`` the difference in points to one
decimal, every other metric (``group_conversion_rate`` too, as Plausible's falls through
to it) the percentage change rounded half away from zero (100 from 0 to more, 0 from 0
to 0, none when either side has no value, as revenue without a currency).
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from event_analytics.analytics.stats_spec import Comparison

POINTS = ("conversion_rate",)


def comparison_range(c: Comparison, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    if c.mode == "previous_period":
        return start - (end - start), start
    if c.mode == "year_over_year":
        return _year_back(start), _year_back(end)
    assert c.start is not None and c.end is not None
    return c.start, c.end


def _year_back(moment: datetime) -> datetime:
    if moment.month == 2 and moment.day == 29:
        return moment.replace(year=moment.year - 1, day=28)
    return moment.replace(year=moment.year - 1)


def _number(value: Any) -> int | float | None:
    if isinstance(value, dict):  # revenue: {"value": ..., ...}
        value = value["value"]
    assert value is None or isinstance(value, int | float)
    return value


def change(metric: str, old: Any, new: Any) -> int | float | None:
    """The change from ``old`` to ``new`` of ``metric`` as shown in a row, computed as
    Plausible's Elixir does: in floats, rounded from the float's exact value (half away
    from zero, as Elixir's ``round`` and ``Float.round``)."""
    before, after = _number(old), _number(new)
    if before is None or after is None:
        return None
    if metric == "bounce_rate":
        return after - before if before > 0 else None
    if metric in POINTS:
        points = Decimal(float(after) - float(before))
        return float(points.quantize(Decimal("0.1"), ROUND_HALF_UP))
    if before == 0:
        return 100 if after > 0 else 0
    percent = (after - before) / before * 100
    return int(Decimal(percent).to_integral_value(ROUND_HALF_UP))
