"""What the site page's requests must answer over the analytics bench's archive, computed
in plain Python from the records the generator sent (``analytics_bench.hour_records``),
by the semantics docs/api.md states (visits split after more than the session timeout,
a visit's source its first event's, ratios rounded half to even from exact fractions),
not by the code under test. site_page_bench.py checks every answer it times against it.

The bench's range holds the whole archive (its 7 days end with the archive's end), so
every visit starts in it and the previous period is empty.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

from event_analytics.archive.record import Record
from event_analytics.goals import Goal, Kind

PANEL_ROWS = 9  # site.js's first tab shows the top 9


@dataclass
class _Visit:
    user: str
    first: datetime
    last: datetime
    source: str
    pageviews: int = 0
    others: int = 0


@dataclass
class _Tally:
    """Per-value visitors, events and revenue (cents in the goal's currency)."""

    visitors: defaultdict[Any, set[str]] = field(default_factory=lambda: defaultdict(set))
    events: defaultdict[Any, int] = field(default_factory=lambda: defaultdict(int))
    cents: defaultdict[Any, int] = field(default_factory=lambda: defaultdict(int))
    dropped: int = 0  # amounts in another currency than the goal's: not summed


def _cents(amount: str) -> int:
    whole, _, frac = amount.partition(".")
    return int(whole) * 100 + int(frac.ljust(2, "0")[:2])


def money(cents: int) -> str:
    """Plausible's ``long`` money text for a USD amount: ``$1,322.22``."""
    return f"${cents // 100:,}.{cents % 100:02d}"


def _top(values: dict[Any, set[str]], limit: int) -> list[list[Any]]:
    """``[[value], [visitors]]`` rows, most visitors first, then by value, ``None`` last."""
    order = sorted(values, key=lambda v: (-len(values[v]), v is None, v or ""))
    return [[[v], [len(values[v])]] for v in order[:limit]]


class Model:
    def __init__(self, end: datetime, days: int, goals: tuple[Goal, ...], timeout_s: int) -> None:
        self.end, self.goals, self.timeout = end, goals, timedelta(seconds=timeout_s)
        self.days = days
        self.open: dict[str, _Visit] = {}
        self.visits = self.pageviews = self.bounces = 0
        self.duration_us = 0
        self.events = 0
        self.users: set[str] = set()
        self.recent_users: set[str] = set()
        self.recent_events = 0
        self.by_day: defaultdict[str, set[str]] = defaultdict(set)
        self.pages, self.sources = _Tally(), _Tally()
        self.goal_tally, self.plans = _Tally(), _Tally()

    def add_hour(self, records: Iterable[Record]) -> None:
        """One hour's records; hours in order (a visit's events are in order within an
        hour, and every hour's events are after the one before's)."""
        key = lambda r: (r.user_id, r.timestamp, r.received_at, str(r.event_id))  # noqa: E731
        for r in sorted(records, key=key):
            self._add(r)

    def _add(self, r: Record) -> None:
        user, ts, p = r.user_id, r.timestamp, r.payload
        visit = self.open.get(user)
        if visit is not None and ts - visit.last > self.timeout:
            self._close(visit)
            visit = None
        if visit is None:
            visit = self.open[user] = _Visit(user, ts, ts, p.get("source") or "Direct / None")
        visit.last = ts
        self.events += 1
        self.users.add(user)
        if ts >= self.end - timedelta(minutes=5):
            self.recent_users.add(user)
            self.recent_events += 1
        page = (urlsplit(p["page_url"]).path or "/") if "page_url" in p else None
        self.pages.visitors[page].add(user)
        if r.event_type == "page_view":
            visit.pageviews += 1
        else:
            visit.others += 1
        for goal in self.goals:
            if goal.kind is Kind.EVENT and r.event_type != goal.event_name:
                continue
            if goal.kind is Kind.PAGE and (r.event_type != "page_view" or page != goal.page_path):
                continue
            self._count(self.goal_tally, goal.display_name, goal, r)
            if goal.display_name == "Purchase":
                self._count(self.plans, p.get("plan"), goal, r)

    @staticmethod
    def _count(tally: _Tally, value: Any, goal: Goal, r: Record) -> None:
        tally.visitors[value].add(r.user_id)
        tally.events[value] += 1
        amount = r.payload.get("revenue_amount")
        if goal.currency and amount is not None:
            if r.payload.get("revenue_currency") == goal.currency:
                tally.cents[value] += _cents(amount)
            else:
                tally.dropped += 1

    def _close(self, v: _Visit) -> None:
        del self.open[v.user]
        self.visits += 1
        self.pageviews += v.pageviews
        self.bounces += v.pageviews == 1 and v.others == 0
        self.duration_us += (v.last - v.first) // timedelta(microseconds=1)
        self.by_day[v.first.date().isoformat()].add(v.user)
        self.sources.visitors[v.source].add(v.user)

    def answers(self) -> dict[str, Any]:
        """Each request's expected answer, named as site_page_bench.page_set names them:
        rows of ``[dimensions, metrics]`` (``+ [comparison metrics]`` with a comparison),
        money as its ``long`` text."""
        for visit in list(self.open.values()):
            self._close(visit)
        visitors, n = len(self.users), self.visits
        top = [visitors, n, self.pageviews, float(round(Fraction(self.pageviews, n), 2)),
               round(Fraction(100 * self.bounces, n)),
               round(Fraction(self.duration_us, n * 1_000_000))]  # fmt: skip
        days = sorted(self.by_day)
        week = timedelta(days=self.days)  # the previous period: the range's length before
        before = {d: (datetime.fromisoformat(d) - week).date().isoformat() for d in days}
        graph = [[[d], [len(self.by_day[d])], [0], [before[d]]] for d in days]
        g = self.goal_tally
        currencies = {goal.currency for goal in self.goals}
        one = next(iter(currencies)) if len(currencies) == 1 else None
        goal_rev = money(sum(g.cents.values())) if one else None
        goal_rows = []
        for (name,), (vis,) in _top(g.visitors, 100):
            goal = next(x for x in self.goals if x.display_name == name)
            rate = float(round(Fraction(100 * vis, visitors), 2))
            rev = money(g.cents[name]) if goal.currency else None
            goal_rows.append([[name], [vis, g.events[name], rate, rev]])
        plans = [[[plan], [vis, self.plans.events[plan], money(self.plans.cents[plan])]]
                 for (plan,), (vis,) in _top(self.plans.visitors, 100)]  # fmt: skip
        panel = lambda t: {"rows": _top(t.visitors, PANEL_ROWS), "total_rows": len(t.visitors)}  # noqa: E731
        return {
            "site picker: /api/sites 12mo": {"sites": [["shop.example", visitors, self.events]]},
            "top row, previous period": {"rows": [[[], top, [0, 0, 0, 0.0, 0, 0]]]},
            "graph per day, previous period": {"rows": graph},
            "panel event:page": panel(self.pages),
            "panel visit:source": panel(self.sources),
            # the bench's events carry no address or user agent: one row, no value
            "panel visit:country": {"rows": [[[None], [visitors]]], "total_rows": 1},
            "panel visit:device": {"rows": [[[None], [visitors]]], "total_rows": 1},
            "goals: conversions, revenue, previous period": {
                "rows": [[[], [sum(g.events.values()), goal_rev], [0, None]]]
            },
            "goals panel": {"rows": goal_rows, "dropped": g.dropped},
            "goal properties: event:props:plan of Purchase": {
                "rows": plans,
                "dropped": self.plans.dropped,
            },
            "current visitors: /api/sites 5 min": {
                "sites": [["shop.example", len(self.recent_users), self.recent_events]]
            },
        }


def build(
    hours: Iterator[tuple[datetime, list[Record]]],
    end: datetime,
    days: int,
    goals: tuple[Goal, ...],
    timeout_s: int,
) -> dict[str, Any]:
    model = Model(end, days, goals, timeout_s)
    for _, records in hours:
        model.add_hour(records)
    return model.answers()


def _money(v: Any) -> Any:
    return v["long"] if isinstance(v, dict) else v


def seen(answer: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """An answer in the expected answer's shape (only the parts the model states)."""
    if "sites" in answer:
        return {"sites": [[s["site_id"], s["visitors"], s["events"]] for s in answer["sites"]]}
    rows = []
    for r in answer["results"]:
        row = [r["dimensions"], [_money(m) for m in r["metrics"]]]
        if "comparison" in r:
            row.append([_money(m) for m in r["comparison"]["metrics"]])
            if r["dimensions"]:
                row.append(r["comparison"]["dimensions"])
        rows.append(row)
    out: dict[str, Any] = {"rows": rows}
    if "total_rows" in expected:
        out["total_rows"] = answer["meta"].get("total_rows")
    if "dropped" in expected:
        out["dropped"] = answer["meta"].get("revenue_dropped_events")
    return out
