"""Every analytics endpoint equals an in-memory model, over random event histories.

Random events over types, users, pages and minutes (crossing hours and days, some with a
+05:30 offset, some in the last minutes for /realtime) arrive out of order, with resends
of earlier events. Exact figures must equal the model; HyperLogLog figures must be
within 3 x 0.81% (or one user, for tiny sets), which matters from 1,000 users: a rule
adds a crowd of 1,000+ users to one minute.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from event_analytics.timebucket import Interval, bucket_count, buckets, floor
from tests.backends import Backend
from tests.direct import ingest
from tests.helpers import IST, event, hll_close, seed_key, z
from tests.inproc import InProcessService, Service

TYPES = ("page_view", "click", "signup")
USERS = tuple(f"u{i}" for i in range(6))
# Two pages share a prefix (a page's users must not leak into the other), one is not ASCII.
PAGES = (
    "https://example.com/",
    "https://example.com/a",
    "https://example.com/a/b",
    "https://example.com/ü",
)
# Minutes after BASE: both sides of hour and day boundaries, all within the 7-day window.
MINUTES = (0, 1, 59, 60, 61, 1439, 1440, 1441, 2000)
EDGES = (-30, 0, 1, 59, 60, 61, 1439, 1440, 1441, 2000, 2880, 4000)


@dataclass(frozen=True)
class Sent:
    body: dict[str, Any]
    user: str
    event_type: str
    page: str | None
    ts: datetime


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


class AnalyticsModel(RuleBasedStateMachine):
    svc: ClassVar[Service]
    db: ClassVar[Backend]
    exact: ClassVar[bool]
    base: ClassVar[datetime]

    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        self.db.flush()
        self.http = self.svc.http  # the app's own client: not closed here
        self.events: list[Sent] = []
        self.crowded = False
        self.recent = floor(datetime.now(UTC), Interval.MINUTE) + timedelta(minutes=1)

    # -- the model ---------------------------------------------------------------------

    def select(
        self, event_type: str, lo: datetime, hi: datetime, page: str | None = None
    ) -> list[Sent]:
        return [
            e
            for e in self.events
            if e.event_type == event_type and lo <= e.ts < hi and (page is None or e.page == page)
        ]

    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(f"{self.svc.url}/analytics/{path}", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def assert_users(self, got: int, users: Iterable[Sent] | set[str], exact: bool) -> None:
        want = len({u if isinstance(u, str) else u.user for u in users})
        if exact:
            assert got == want
        else:
            assert hll_close(got, want), (got, want)

    # -- writes ------------------------------------------------------------------------

    @rule(
        target=sent,
        specs=st.lists(
            st.tuples(
                st.sampled_from(TYPES),
                st.sampled_from(USERS),
                st.none() | st.sampled_from(PAGES),
                st.none() | st.sampled_from(MINUTES),
                st.integers(0, 59),
                st.booleans(),
            ),
            min_size=1,
            max_size=8,
        ),
    )
    def send(self, specs: list[tuple[str, str, str | None, int | None, int, bool]]) -> Sent:
        """POST a few events (each arrives in its own request, in list order)."""
        for event_type, user, page, minute, second, offset in specs:
            if event_type == "page_view" and page is None:
                page = PAGES[0]
            if minute is None:  # recent, for /realtime and page_views_per_minute: up to 3
                # minutes back from the minute the example started in (replays alike).
                ts = self.recent - timedelta(minutes=second % 4, seconds=second)
            else:
                ts = self.base + timedelta(minutes=minute, seconds=second)
            when = ts.astimezone(IST) if offset else ts
            body = event(user=user, ts=when, event_type=event_type, url=page)
            r = self.http.post(f"{self.svc.url}/events", json=body)
            assert r.status_code == 201, r.text
            self.events.append(Sent(body, user, event_type, page, ts))
        return self.events[-1]

    @rule(sent=sent)
    def resend(self, sent: Sent) -> None:
        r = self.http.post(f"{self.svc.url}/events", json=sent.body)
        assert r.status_code == 200 and r.json()["duplicate"] is True, r.text

    @precondition(lambda self: not self.crowded)
    @rule(
        size=st.integers(1000, 1300),
        minute=st.sampled_from(MINUTES),
        page=st.sampled_from(PAGES),
    )
    def crowd(self, size: int, minute: int, page: str) -> None:
        ts = self.base + timedelta(minutes=minute, seconds=30)
        bodies = [event(user=f"c{i}", ts=ts, url=page) for i in range(size)]
        uniques = "exact" if self.exact else "approx"
        assert all(ingest(self.db.env, bodies, uniques=uniques))
        self.events += [Sent(b, b["user_id"], "page_view", page, ts) for b in bodies]
        self.crowded = True

    # -- reads -------------------------------------------------------------------------

    @rule(
        event_type=st.sampled_from(TYPES),
        interval=st.sampled_from(list(Interval)),
        edges=st.tuples(st.sampled_from(EDGES), st.sampled_from(EDGES)).filter(
            lambda e: e[0] < e[1]
        ),
        page=st.none() | st.sampled_from(PAGES),
    )
    def timeseries(
        self, event_type: str, interval: Interval, edges: tuple[int, int], page: str | None
    ) -> None:
        lo, hi = (self.base + timedelta(minutes=m) for m in edges)
        params: dict[str, Any] = {"event_type": event_type, "interval": interval.value}
        params |= {"from": z(lo), "to": z(hi)} | ({"page_url": page} if page else {})
        points = buckets(lo, hi, interval)
        too_many = len(points) > 1440 or (
            page and interval is Interval.DAY and len(points) * 24 > 1440
        )
        r = self.http.get(f"{self.svc.url}/analytics/timeseries", params=params)
        if too_many:
            assert r.status_code == 422 and r.json()["errors"][0]["code"] == "too_many_points"
            return
        assert r.status_code == 200, r.text
        got = r.json()
        exact = interval is Interval.MINUTE or self.exact
        assert got["unique_users_method"] == ("exact" if exact else "hll")
        assert got["from"] == z(points[0]) and got["to"] == z(points[-1] + interval.delta)
        assert [p["timestamp"] for p in got["points"]] == [z(p) for p in points]
        for point, start in zip(got["points"], points, strict=True):
            inside = self.select(event_type, start, start + interval.delta, page)
            assert point["count"] == len(inside)
            self.assert_users(point["unique_users"], inside, exact)
        everything = self.select(event_type, points[0], points[-1] + interval.delta, page)
        assert got["total"]["count"] == len(everything)
        self.assert_users(got["total"]["unique_users"], everything, exact)

    @rule(
        event_type=st.sampled_from(TYPES),
        edges=st.tuples(st.sampled_from(EDGES), st.sampled_from(EDGES)).filter(
            lambda e: e[0] < e[1]
        ),
        limit=st.integers(1, 5),
    )
    def top_pages(self, event_type: str, edges: tuple[int, int], limit: int) -> None:
        lo, hi = (self.base + timedelta(minutes=m) for m in edges)
        got = self.get(
            "top-pages", event_type=event_type, limit=limit, **{"from": z(lo), "to": z(hi)}
        )
        level = Interval.MINUTE if bucket_count(lo, hi, Interval.MINUTE) <= 1440 else Interval.HOUR
        assert got["bucket_interval"] == level.value
        exact = level is Interval.MINUTE or self.exact
        assert got["unique_users_method"] == ("exact" if exact else "hll")
        start, end = parse(got["from"]), parse(got["to"])
        assert start == floor(lo, level) and end == buckets(lo, hi, level)[-1] + level.delta
        self.assert_pages(got["pages"], self.select(event_type, start, end), limit, exact)

    def assert_pages(
        self, got: list[dict[str, Any]], events: list[Sent], limit: int, exact: bool = True
    ) -> None:
        counts: dict[str, int] = {}
        users: dict[str, set[str]] = {}
        for e in events:
            if e.page is not None:
                counts[e.page] = counts.get(e.page, 0) + 1
                users.setdefault(e.page, set()).add(e.user)
        ranked = sorted(counts, key=lambda p: (-counts[p], p))[:limit]
        assert [(p["page_url"], p["count"]) for p in got] == [(p, counts[p]) for p in ranked]
        for row in got:
            self.assert_users(row["unique_users"], users[row["page_url"]], exact)

    @rule(event_type=st.sampled_from(TYPES), minute=st.sampled_from(MINUTES))
    def minute_bucket(self, event_type: str, minute: int) -> None:
        start = self.base + timedelta(minutes=minute)
        got = self.get(f"minute-buckets/{seed_key(start, event_type)}")
        inside = self.select(event_type, start, start + timedelta(minutes=1))
        assert got["count"] == len(inside)
        assert got["unique_users"] == len({e.user for e in inside})

    @rule(event_type=st.sampled_from(TYPES), limit=st.integers(1, 5))
    def realtime(self, event_type: str, limit: int) -> None:
        got = self.get("realtime", event_type=event_type, limit=limit)
        lo, hi = parse(got["window"]["from"]), parse(got["window"]["to"])
        inside = self.select(event_type, lo, hi)
        assert got["events"] == len(inside)
        assert got["active_users"] == len({e.user for e in inside})
        for name, start in (
            ("current_minute", hi - timedelta(minutes=1)),
            ("previous_minute", hi - timedelta(minutes=2)),
        ):
            minute = self.select(event_type, start, start + timedelta(minutes=1))
            assert got[name] == {
                "timestamp": z(start),
                "count": len(minute),
                "unique_users": len({e.user for e in minute}),
            }
        self.assert_pages(got["top_pages"], inside, limit)

    @rule(event_type=st.sampled_from(TYPES))
    def per_minute_with_users(self, event_type: str) -> None:
        rows = self.get(
            "page_views_per_minute", minutes=5, event_type=event_type, include_users="true"
        )
        for row in rows:
            start = parse(row["minute_timestamp"])
            inside = self.select(event_type, start, start + timedelta(minutes=1))
            users = sorted({e.user for e in inside})
            assert row == {
                "minute_timestamp": row["minute_timestamp"],
                "count": len(inside),
                "unique_users": len(users),
                "users": users,
                "truncated": False,
            }


RUN = settings(
    max_examples=10,
    stateful_step_count=30,
    deadline=None,
    # No shrinking: each replay drives the real service (~1 s), and hundreds of replays
    # would outlast the test timeout. A failure prints its whole (short) step list.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_endpoints_equal_the_model(request: pytest.FixtureRequest, db: Backend, mode: str) -> None:
    # The app in this process (tests.inproc): the counters and the read API, no worker.
    svc: InProcessService = request.getfixturevalue(
        "app_service" if mode == "approx" else "exact_app"
    )

    class Machine(AnalyticsModel):
        pass

    Machine.svc, Machine.db, Machine.exact = svc, db, mode == "exact"
    # Two days back from the start of a day: every MINUTES offset is inside the 7 days.
    Machine.base = floor(datetime.now(UTC) - timedelta(days=3), Interval.DAY)
    run_state_machine_as_test(Machine, settings=RUN)
