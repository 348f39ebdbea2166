"""A plain-Python model of visits and the Stats API v2 semantics of docs/api.md, to
compare DuckDB's answers with. Written from the definitions, not from the SQL: each
visitor's events sorted and cut into visits in a loop, metrics counted per row."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from event_analytics.analytics.stats_goals import money
from event_analytics.analytics.stats_spec import Condition, Done, Filter, Logic, Not, StatsQuery
from event_analytics.goals import Goal, event_name_of, matches
from event_analytics.sites import host_of, path_of, site_of
from tests.analytics_model import text_of, ts_of

UTM = ("utm_medium", "utm_source", "utm_campaign", "utm_content", "utm_term")


def _key(r: dict[str, Any]) -> tuple[datetime, datetime, str]:
    return ts_of(r), datetime.fromisoformat(r["received_at"]), r["event_id"]


@dataclass
class Visit:
    user: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start(self) -> datetime:
        return ts_of(self.events[0])

    @property
    def pages(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event_type"] == "page_view"]

    @property
    def bounce(self) -> bool:
        others = [e for e in self.events if e["event_type"] != "page_view"
                  and text_of(e["payload"].get("interactive")) != "false"]  # fmt: skip
        return len(self.pages) == 1 and not others

    @property
    def duration_us(self) -> int:
        return (ts_of(self.events[-1]) - self.start) // timedelta(microseconds=1)

    def attribute(self, name: str) -> str | None:
        first = self.events[0]["payload"]
        if name == "entry_page":
            return path_of(self.pages[0]["payload"].get("page_url")) if self.pages else None
        if name == "exit_page":
            return path_of(self.pages[-1]["payload"].get("page_url")) if self.pages else None
        if name in ("source", "referrer"):
            return text_of(first.get(name)) or "Direct / None"
        if name == "device":
            device = text_of(first.get("device"))
            return device[:1].upper() + device[1:] if device is not None else None
        return text_of(first.get(name))


def visits_of(
    records: list[dict[str, Any]], site: str, start: datetime, end: datetime, timeout_s: int
) -> list[Visit]:
    """Visits of ``site`` starting in [start, end), with their events before ``end``."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["event_type"].startswith("bot_") or site_of(r["payload"]) != site:
            continue
        if ts_of(r) < end:  # all earlier events: the lookback is the SQL's business
            by_user[r["user_id"]].append(r)
    out = []
    for user, events in by_user.items():
        events.sort(key=_key)
        current: Visit | None = None
        for e in events:
            gap = ts_of(e) - ts_of(current.events[-1]) if current else None
            if gap is None or gap > timedelta(seconds=timeout_s):
                current = Visit(user)
                out.append(current)
            current.events.append(e)
    return [v for v in out if v.start >= start]


def value(name: str, visit: Visit, event: dict[str, Any], unit: str | None = None) -> Any:
    if name.startswith("time"):
        assert unit is not None
        s = visit.start
        if unit == "hour":
            return s.replace(minute=0, second=0, microsecond=0)
        day = s.replace(hour=0, minute=0, second=0, microsecond=0)
        if unit == "day":
            return day
        if unit == "week":
            return day - timedelta(days=day.weekday())
        return day.replace(day=1)
    if name.startswith("visit:"):
        return visit.attribute(name.removeprefix("visit:"))
    url = text_of(event["payload"].get("page_url"))
    if name == "event:page":
        return path_of(url)
    if name == "event:hostname":
        return host_of(url)
    if name == "event:name":
        if event["event_type"] == "page_view":
            return "pageview"
        return text_of(event["payload"].get("event_name")) or event["event_type"]
    return text_of(event["payload"].get(name.removeprefix("event:props:"))) or "(none)"


def completes(goal: Goal, event: dict[str, Any]) -> bool:
    name = event_name_of(event["event_type"], event["payload"])
    url = text_of(event["payload"].get("page_url"))
    return matches(goal, event["event_type"], name, path_of(url))


def _name_passes(c: Condition, name: str) -> bool:
    return holds_value(replace(c, op=c.op.removesuffix("_not")), name)


def holds(
    f: Filter, visit: Visit, event: dict[str, Any], counted: list[Visit],
    goals: tuple[Goal, ...] = (), goal: Goal | None = None,
) -> bool:  # fmt: skip
    """Whether ``event`` of ``visit`` passes ``f``; ``counted``: all the range's visits;
    ``goal``: the goal of the row when grouped by goal."""
    if isinstance(f, Not):
        return not holds(f.inner, visit, event, counted, goals, goal)
    if isinstance(f, Done):
        did = any(
            holds(f.inner, v, e, counted, goals)
            for v in counted
            if v.user == visit.user
            for e in v.events
        )
        return did != f.negated
    if isinstance(f, Logic):
        results = [holds(g, visit, event, counted, goals, goal) for g in f.items]
        return all(results) if f.op == "and" else any(results)
    assert isinstance(f, Condition)
    if f.dimension == "event:goal":
        if goal is not None:
            return holds_value(f, goal.display_name)
        hit = any(completes(g, event) for g in goals if _name_passes(f, g.display_name))
        return hit != f.op.endswith("_not")
    return holds_value(f, value(f.dimension, visit, event))


def holds_value(f: Condition, got: Any) -> bool:
    base = f.op.removesuffix("_not")
    values = list(f.values)
    if got is not None and not f.case_sensitive and base != "matches":
        got, values = got.lower(), [v.lower() for v in values]
    if got is None:
        positive = False
    elif base == "is":
        positive = got in values
    elif base == "contains":
        positive = any(v in got for v in values)
    else:
        flags = 0 if f.case_sensitive else re.IGNORECASE
        positive = any(re.search(v, got, flags) for v in values)
    return not positive if f.op.endswith("_not") else positive


def _round(x: Fraction, digits: int = 0) -> Any:
    return round(x, digits) if digits else round(x)


def _pairs(visit: Visit, q: StatsQuery) -> list[tuple[dict[str, Any], Goal | None]]:
    """The visit's rows: its events, or grouped by goal each (event, goal completed)."""
    if "event:goal" not in q.dimensions:
        return [(e, None) for e in visit.events]
    return [(e, g) for e in visit.events for g in q.goals if completes(g, e)]


def _dims(q: StatsQuery, visit: Visit, e: dict[str, Any], goal: Goal | None, unit: str | None,
          skip_goal: bool = False) -> tuple[Any, ...]:  # fmt: skip
    return tuple(
        (goal.display_name if goal else None) if d == "event:goal" else value(d, visit, e, unit)
        for d in q.dimensions
        if not (skip_goal and d == "event:goal")
    )


def _currency(q: StatsQuery, key: tuple[Any, ...]) -> str | None:
    if "event:goal" in q.dimensions:
        name = key[q.dimensions.index("event:goal")]
        found = {g.currency for g in q.goals if g.display_name == name}
    else:
        found = set()
        stack = list(q.filters)
        while stack:
            f = stack.pop()
            if isinstance(f, Logic):
                stack.extend(f.items)
            elif isinstance(f, (Not, Done)):
                stack.append(f.inner)
            elif f.dimension == "event:goal" and not f.op.endswith("_not"):
                found |= {g.currency for g in q.goals if _name_passes(f, g.display_name)}
    return next(iter(found)) if len(found) == 1 else None


def _top_level_kept(q: StatsQuery) -> list[Filter]:
    return [f for f in q.filters if not (isinstance(f, Condition) and (
        f.dimension == "event:goal" or f.dimension.startswith("event:props:")))]  # fmt: skip


def query(
    records: list[dict[str, Any]], q: StatsQuery, start: datetime, end: datetime,
    timeout_s: int, unit: str | None,
) -> tuple[list[dict[str, Any]], int, int]:  # fmt: skip
    """Plausible-shaped results (all rows, paged), the number of rows, and the number of
    revenue amounts dropped (another currency than the goal's)."""
    rows: dict[tuple[Any, ...], dict[tuple[str, int], list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    selected: dict[tuple[str, int], Visit] = {}
    counted = visits_of(records, q.site_id, start, end, timeout_s)
    for i, visit in enumerate(counted):
        for e, goal in _pairs(visit, q):
            if all(holds(f, visit, e, counted, q.goals, goal) for f in q.filters):
                key = _dims(q, visit, e, goal, unit)
                rows[key][(visit.user, i)].append(e)
                selected[(visit.user, i)] = visit
    if not q.dimensions and not rows:
        rows[()] = defaultdict(list)
    all_visitors = len({user for user, _ in selected})
    # Conversion denominators: visitors without the top-level goal and property filters.
    kept = _top_level_kept(q)
    groups: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for visit in counted:
        for e in visit.events:
            if all(holds(f, visit, e, counted, q.goals) for f in kept):
                groups[_dims(q, visit, e, None, unit, skip_goal=True)].add(visit.user)
    converting = len(set().union(*groups.values())) if groups else 0
    out = []
    dropped = 0
    for key, by_visit in rows.items():
        vs = [selected[k] for k in by_visit]
        n = len(vs)
        sums = {
            "visitors": len({v.user for v in vs}),
            "visits": n,
            "pageviews": sum(
                e["event_type"] == "page_view" for es in by_visit.values() for e in es
            ),
            "events": sum(len(es) for es in by_visit.values()),
        }
        currency = _currency(q, key)
        amounts = [
            (Decimal(e["payload"]["revenue_amount"]), e["payload"]["revenue_currency"].upper())
            for es in by_visit.values()
            for e in es
            if "revenue_amount" in e["payload"]
        ]
        kept_amounts = [a for a, c in amounts if c == currency]
        if currency is not None:
            dropped += len(amounts) - len(kept_amounts)
        revenue = sum(kept_amounts, Decimal(0)) if kept_amounts else None
        average = revenue / len(kept_amounts) if revenue is not None else None
        gkey = tuple(k for d, k in zip(q.dimensions, key, strict=True) if d != "event:goal")
        group_total = len(groups.get(gkey, ()))
        exact = {
            **{k: Fraction(v) for k, v in sums.items()},
            "percentage": Fraction(sums["visitors"]),
            "views_per_visit": Fraction(sum(len(v.pages) for v in vs), n) if n else None,
            "bounce_rate": Fraction(100 * sum(v.bounce for v in vs), n) if n else None,
            "visit_duration": Fraction(sum(v.duration_us for v in vs), n * 10**6) if n else None,
            "conversion_rate": Fraction(sums["visitors"]),
            "group_conversion_rate": Fraction(sums["visitors"], group_total)
            if group_total else None,
            "total_revenue": revenue,
            "average_revenue": average,
        }  # fmt: skip
        shown: dict[str, Any] = dict(sums)
        shown["views_per_visit"] = float(round(exact["views_per_visit"] or Fraction(0), 2))
        shown["bounce_rate"] = round(exact["bounce_rate"] or Fraction(0))
        shown["visit_duration"] = round(exact["visit_duration"] or Fraction(0))
        pct = Fraction(100 * sums["visitors"], all_visitors) if all_visitors else Fraction(0)
        shown["percentage"] = float(round(pct, 1))
        conv = Fraction(100 * sums["visitors"], converting) if converting else Fraction(0)
        shown["conversion_rate"] = float(round(conv, 2))
        group = Fraction(100 * sums["visitors"], group_total) if group_total else Fraction(0)
        shown["group_conversion_rate"] = float(round(group, 2))
        shown["total_revenue"] = money(revenue or Decimal(0), currency) if currency else None
        shown["average_revenue"] = money(average or Decimal(0), currency) if currency else None
        out.append((dict(zip(q.dimensions, key, strict=True)), exact, shown))
    terms = list(q.order_by)
    if not terms:
        times = [d for d in q.dimensions if d.startswith("time")]
        terms = [(times[0], "asc")] if times else [(q.metrics[0], "desc")]
    named = {n for n, _ in terms}
    terms += [(d, "asc") for d in q.dimensions if d not in named]
    for name, direction in reversed(terms):

        def sort_key(row: Any, name: str = name) -> Any:
            v = row[0][name] if name in row[0] else row[1][name]
            return v

        present = [r for r in out if sort_key(r) is not None]
        missing = [r for r in out if sort_key(r) is None]
        present.sort(key=sort_key, reverse=direction == "desc")
        out = present + missing
    results = [
        {"metrics": [r[2][m] for m in q.metrics], "dimensions": [r[0][d] for d in q.dimensions]}
        for r in out
    ]
    return results[q.offset : q.offset + q.limit], len(results), dropped


def iso_day(value: datetime) -> datetime:
    return value.astimezone(UTC)


ZERO = {"visitors": 0, "visits": 0, "pageviews": 0, "events": 0, "views_per_visit": 0.0,
        "bounce_rate": 0, "visit_duration": 0, "percentage": 0.0, "conversion_rate": 0.0,
        "group_conversion_rate": 0.0}  # fmt: skip


def _change(metric: str, old: Any, new: Any) -> Any:
    """Plausible's Compare.calculate_change, restated (Elixir's float arithmetic; its
    ``round`` and ``Float.round`` take ties away from zero)."""
    if isinstance(old, dict):
        old, new = old["value"], new["value"]
    if old is None or new is None:
        return None
    if metric == "bounce_rate":
        return new - old if old > 0 else None
    if metric == "conversion_rate":
        return float(Decimal(float(new) - float(old)).quantize(Decimal("0.1"), "ROUND_HALF_UP"))
    if old == 0:
        return 100 if new > 0 else 0
    return int(Decimal((new - old) / old * 100).quantize(Decimal(1), "ROUND_HALF_UP"))


def compared(
    records: list[dict[str, Any]], q: StatsQuery, main: tuple[datetime, datetime],
    other: tuple[datetime, datetime], timeout_s: int, unit: str | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The main range's rows (paged), each with ``comparison`` from the ``other`` range;
    dimension values unlabelled (time buckets as datetimes)."""
    from event_analytics.analytics.periods import Period

    rows, _, _ = query(records, q, *main, timeout_s, unit)
    everything = replace(q, limit=10**9, offset=0)
    crows, _, _ = query(records, everything, *other, timeout_s, unit)
    times = [i for i, d in enumerate(q.dimensions) if d.startswith("time")]

    def key(dims: list[Any], start: datetime) -> tuple[Any, ...]:
        assert unit is not None or not times
        p = Period(unit or "day")
        return tuple(p.number(v) - p.number(start) if i in times else v
                     for i, v in enumerate(dims))  # fmt: skip

    found = {key(r["dimensions"], other[0]): r for r in crows}
    for row in rows:
        k = key(row["dimensions"], main[0])
        match = found.get(k)
        if match is None:
            p = Period(unit or "day")
            dims = [p.start(p.number(other[0]) + k[i]) if i in times else v
                    for i, v in enumerate(row["dimensions"])]  # fmt: skip
            currency = _currency(q, tuple(row["dimensions"]))
            metrics = [
                ZERO[m] if m in ZERO else (money(Decimal(0), currency) if currency else None)
                for m in q.metrics
            ]
            match = {"dimensions": dims, "metrics": metrics}
        row["comparison"] = {
            "dimensions": match["dimensions"],
            "metrics": match["metrics"],
            "change": [
                _change(m, o, n)
                for m, o, n in zip(q.metrics, match["metrics"], row["metrics"], strict=True)
            ],
        }
    return rows


def records_of(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events sent, in order, as the archive's records for this model: UTC times,
    received when they happened, and ids by position (each a tie-break of its own)."""
    out = []
    for i, b in enumerate(bodies):
        ts = datetime.fromisoformat(b["timestamp"]).astimezone(UTC).isoformat()
        out.append({**b, "event_id": str(uuid.UUID(int=i)), "timestamp": ts, "received_at": ts})
    return out
