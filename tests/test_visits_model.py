"""The Stats API planner's visits and metrics (DuckDB) against tests/visits_model.py, on
archive files written by the archiver's own file code."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from event_analytics.analytics import stats, visits
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.stats_spec import GOAL_METRICS, StatsQuery, parse_query, with_goals
from event_analytics.goals import Goal, Kind
from event_analytics.sites import SITE_SQL, host_of, host_sql, path_of, path_sql, site_of
from tests import visits_model as model
from tests.analytics_model import ts_of
from tests.test_analytics_model import ENGINE, HYPOTHESIS, STORAGE, iso, write

BASE = datetime(2026, 11, 28, 22, 0, tzinfo=UTC)
TIMEOUT = 1800
URLS = ["https://a.example/", "https://www.a.example/pricing?utm_source=x#top",
        "https://a.example/blog/post", "https://b.example/pricing", "http://A.example:8080/x",
        "/bare/path?q=1", None]  # fmt: skip
AMOUNTS = ["10.5", "3", "-1.25", "0.333333333", "1322.22", "999999999999999999"]
SITE_GOALS = [
    Goal(1, "a.example", Kind.EVENT, "Signup", None, None, "Signup"),
    Goal(2, "a.example", Kind.EVENT, "Purchase", None, "USD", "Purchase"),
    Goal(3, "a.example", Kind.EVENT, "Purchase", None, "EUR", "Purchase in EUR"),
    Goal(4, "a.example", Kind.PAGE, None, "/pricing", None, "Visit /pricing"),
    Goal(5, "a.example", Kind.PAGE, None, "/blog/*", None, "Visit /blog/*"),
    Goal(6, "a.example", Kind.PAGE, None, "/**", None, "Visit /**"),
    Goal(7, "a.example", Kind.PAGE, None, "/*", None, "Visit /*"),
    Goal(8, "a.example", Kind.EVENT, "Download", None, None, "Download"),
    Goal(9, "a.example", Kind.EVENT, "page_view", None, None, "Visit /pricing"),
]
GAPS = [0, 0, 5, 600, TIMEOUT - 1, TIMEOUT, TIMEOUT + 1, 2 * 3600]


@st.composite
def sequences(draw: st.DrawFn, ties: bool = True) -> list[dict[str, Any]]:
    """Visitors' events; without ``ties`` no two events at one timestamp, of one visitor
    or of two (two visitors under one key must be caught as such, not as a tie)."""
    out = []
    gaps = GAPS if ties else [g for g in GAPS if g]
    for u in range(draw(st.integers(1, 4))):
        t = draw(st.sampled_from([0, 600, 3000])) + (0 if ties else u / 1000)
        for _ in range(draw(st.integers(1, 9))):
            t += draw(st.sampled_from(gaps)) + draw(st.sampled_from([0, 0, 0.25]))
            kind = draw(st.sampled_from(["page_view", "page_view", "signup", "bot_page_view",
                                         "purchase"]))  # fmt: skip
            payload: dict[str, Any] = {}
            url = draw(st.sampled_from(URLS))
            if url is not None or kind != "signup":
                payload["page_url"] = url or "https://a.example/"
            site = draw(st.sampled_from(["domain", "site", "host", "host"]))
            if site != "host":
                payload[site] = draw(st.sampled_from(["a.example", "b.example"]))
            if kind == "signup":
                payload["event_name"] = draw(st.sampled_from(["Signup", "Download"]))
                if draw(st.booleans()):
                    payload["interactive"] = False
            if kind == "purchase":  # revenue as every ingest path archives it (revenue.py)
                payload["event_name"] = draw(st.sampled_from(["Purchase", "Purchase", 7]))
                if draw(st.integers(0, 3)):
                    payload["revenue_amount"] = draw(st.sampled_from(AMOUNTS))
                    payload["revenue_currency"] = draw(st.sampled_from(["USD", "EUR", "usd"]))
            for name, choices in (("source", ["Google", "Twitter"]), ("device", ["desktop",
                                  "mobile"]), ("country", ["US", "DE"]), ("plan", ["pro", 7]),
                                  ("referrer", ["https://google.com/"]),
                                  ("utm_source", ["news"])):  # fmt: skip
                if draw(st.booleans()):
                    payload[name] = draw(st.sampled_from(choices))
            ts = BASE + timedelta(seconds=t)
            received = ts + timedelta(seconds=draw(st.sampled_from([0, 0, 1])))
            out.append({"event_id": str(uuid.UUID(int=draw(st.integers(0, 2**64)))),
                        "user_id": f"u{u}", "timestamp": iso(ts), "event_type": kind,
                        "payload": payload, "received_at": iso(received)})  # fmt: skip
    return out


DIMENSIONS = ["event:page", "event:hostname", "event:name", "event:props:plan",
              "visit:entry_page", "visit:exit_page", "visit:source", "visit:referrer",
              "visit:utm_source", "visit:device", "visit:country", "visit:browser",
              "time:hour", "time:day", "time", "event:goal", "event:goal"]  # fmt: skip
FILTERS = st.one_of(
    st.builds(
        lambda v: ["is", "visit:country", v],
        st.lists(st.sampled_from(["US", "DE"]), min_size=1, unique=True),
    ),
    st.builds(
        lambda v: ["is_not", "visit:source", [v]], st.sampled_from(["Google", "Direct / None"])
    ),
    st.builds(lambda v: ["contains", "event:page", [v]], st.sampled_from(["/pricing", "blog"])),
    st.builds(lambda v: ["contains_not", "visit:entry_page", [v]], st.sampled_from(["/", "x"])),
    st.builds(lambda v: ["matches", "event:page", [v]], st.sampled_from(["^/b", "g$"])),
    st.builds(lambda v: ["matches_not", "event:hostname", [v]], st.sampled_from(["^a\\."])),
    st.builds(lambda v: ["is", "event:name", [v]], st.sampled_from(["pageview", "Signup"])),
    st.builds(lambda v: ["is", "event:props:plan", [v]], st.sampled_from(["pro", "7", "(none)"])),
    st.builds(lambda v: ["not", ["is", "visit:device", [v]]], st.sampled_from(["Desktop"])),
    st.builds(
        lambda op, v: [op, ["is", "event:name", [v]]],
        st.sampled_from(["has_done", "has_not_done"]),
        st.sampled_from(["Signup", "Download"]),
    ),
    st.builds(
        lambda op, v: [op, "event:page", [v], {"case_sensitive": False}],
        st.sampled_from(["is", "contains", "matches", "contains_not"]),
        st.sampled_from(["/PRICING", "Blog", "^/B"]),
    ),
    st.builds(
        lambda v: ["is", "event:name", [v], {"case_sensitive": False}],
        st.sampled_from(["SIGNUP", "pageview"]),
    ),
    st.builds(
        lambda v: ["is", "event:goal", v],
        st.lists(
            st.sampled_from(
                ["Signup", "Purchase", "Purchase in EUR", "Visit /pricing", "Visit /**"]
            ),
            min_size=1,
            max_size=2,
            unique=True,
        ),
    ),
    st.builds(
        lambda op, v: [op, "event:goal", [v]],
        st.sampled_from(["contains", "is_not", "contains_not", "matches"]),
        st.sampled_from(["Visit", "Purchase", "^S"]),
    ),
    st.builds(
        lambda v: ["or", [["is", "event:goal", [v]], ["is", "visit:country", ["US"]]]],
        st.sampled_from(["Signup", "Visit /blog/*"]),
    ),
    st.builds(lambda v: ["has_done", ["is", "event:goal", [v]]], st.sampled_from(["Signup"])),
    st.builds(
        lambda a, b: ["or", [["is", "visit:exit_page", [a]], ["is", "event:name", [b]]]],
        st.sampled_from(["/pricing", "/"]),
        st.sampled_from(["Download"]),
    ),
)
METRICS = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate",
           "visit_duration", "events", "percentage", *GOAL_METRICS, *GOAL_METRICS]  # fmt: skip


def _goals_named(f: Any) -> list[str]:
    """The goal names of the ``is`` conditions anywhere in a filter (or list of them)."""
    if isinstance(f, list) and len(f) >= 3 and f[:2] == ["is", "event:goal"]:
        return list(f[2])
    return (
        [n for g in f if isinstance(g, list) for n in _goals_named(g)]
        if isinstance(f, list)
        else []
    )


# The visits' plans (analytics/visits.py): the exact one; the fast one with its real key;
# the fast one with a key two visitors share when their numbers have one parity.
PLANS = {"exact": None, "fast": visits.FAST_KEY, "colliding": "right(user_id, 1)::INT % 2"}


def _plan_key(plan: str, user: str) -> str:
    return user if plan == "fast" else str(int(user[-1]) % 2)


def suspect_in_python(
    recs: list[dict[str, Any]], plan: str, site: str, start: datetime, end: datetime
) -> bool:
    """Whether the fast plan cannot order the events it reads (the site's, bots' aside,
    from ``start`` - timeout to ``end``) exactly: one visitor's two events at one time, or
    two visitors under one key. The fast plan must then hand over to the exact one."""
    read = [r for r in recs if not r["event_type"].startswith("bot_")
            and site_of(r["payload"]) == site
            and start - timedelta(seconds=TIMEOUT) <= ts_of(r) < end]  # fmt: skip
    users: dict[str, set[str]] = {}
    for r in read:
        users.setdefault(_plan_key(plan, r["user_id"]), set()).add(r["user_id"])
    times = [(r["user_id"], ts_of(r)) for r in read]
    return len(set(times)) < len(times) or any(len(u) > 1 for u in users.values())


def suspect_in_sql(root: Path, q: StatsQuery, key: str, start: datetime) -> bool:
    """The fast statement's flag, read from an aggregate of the query's range (one row
    always)."""
    agg = replace(q, metrics=("visits",), dimensions=(), filters=(), order_by=(), limit=1,
                  offset=0)  # fmt: skip
    with hour_files(root, start - timedelta(seconds=TIMEOUT), q.end) as files:
        rows = ENGINE.fetch(*stats.build(agg, files, start, q.end, TIMEOUT, key))
    return bool(rows[0][-1])


def model_answer(
    recs: list[dict[str, Any]], q: StatsQuery, compare: str | None
) -> tuple[list[dict[str, Any]], int, int]:
    """The model's results of ``q`` (whose range is set) compared with ``compare`` (a
    mode; "custom" is BASE + 30 min to BASE + 2.5 h), its total rows and dropped revenue
    events."""
    start, end = q.start, q.end
    assert start is not None
    times = [d for d in q.dimensions if d.startswith("time")]
    unit = stats.time_unit(times[0], start, end) if times else None
    want, total, dropped = model.query(recs, q, start, end, TIMEOUT, unit)
    if compare:
        other = {
            "previous_period": (start - (end - start), start),
            "year_over_year": (start.replace(year=start.year - 1), end.replace(year=end.year - 1)),
            "custom": (BASE + timedelta(seconds=1800), BASE + timedelta(seconds=9000)),
        }
        want = model.compared(recs, q, (start, end), other[compare], TIMEOUT, unit)  # fmt: skip
    for row in want:
        for part in (row, row.get("comparison", {})):
            if part:
                part["dimensions"] = [
                    stats.label(v, unit or "") if d.startswith("time") else v
                    for d, v in zip(q.dimensions, part["dimensions"], strict=True)
                ]
    return want, total, dropped


@HYPOTHESIS
@given(
    recs=st.booleans().flatmap(lambda ties: sequences(ties=ties)),  # tie-free or not
    plan=st.sampled_from(sorted(PLANS)),
    site=st.sampled_from(["a.example", "b.example"]),
    metrics=st.lists(st.sampled_from(METRICS), min_size=1, max_size=4, unique=True),
    site_goals=st.lists(st.sampled_from(SITE_GOALS), unique=True),
    dimensions=st.lists(st.sampled_from(DIMENSIONS), max_size=2, unique=True).filter(
        lambda ds: sum(d.startswith("time") for d in ds) <= 1
    ),
    filters=st.lists(FILTERS, max_size=2),
    start_s=st.sampled_from([0, 1800, 3601, 7200, 4 * 3600]),
    length_s=st.sampled_from([1800, 3600, 4 * 3600, 86400]),
    page=st.sampled_from([(10_000, 0), (2, 0), (2, 1)]),
    compare=st.sampled_from([None, None, "previous_period", "year_over_year", "custom"]),
    storage=STORAGE,
    data=st.data(),
)
def test_stats_match_model(
    tmp_path: Path,
    recs: list[dict[str, Any]],
    plan: str,
    site: str,
    metrics: list[str],
    site_goals: list[Goal],
    dimensions: list[str],
    filters: list[Any],
    start_s: int,
    length_s: int,
    page: tuple[int, int],
    compare: str | None,
    storage: str,
    data: st.DataObject,
) -> None:
    """Every plan answers as the model; the fast plan hands over to the exact one exactly
    when its order may be wrong (ties, a shared key), else its own answer is the one."""
    start = BASE + timedelta(seconds=start_s)
    end = start + timedelta(seconds=length_s)
    event_scoped = any(d.startswith("event:") for d in dimensions) or any(
        "event:" in str(f) for f in filters
    )
    if event_scoped and "views_per_visit" in metrics:
        metrics.remove("views_per_visit")
    if not dimensions and "percentage" in metrics:
        metrics.remove("percentage")
    # Goals: every goal an "is" filter names exists (else 400, tested apart); the goal
    # metrics only with an event:goal filter or dimension.
    goals = {g.id: g for g in site_goals}
    for name in _goals_named(filters):
        goals.update((g.id, g) for g in SITE_GOALS if g.display_name == name)
    by_goal = "event:goal" in dimensions or "event:goal" in str(filters)
    metrics = [m for m in metrics if by_goal or m not in GOAL_METRICS]
    if not metrics:
        metrics = ["visits"]
    names = metrics + dimensions
    order_by = data.draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(["asc",
                         "desc"])), max_size=2, unique_by=lambda t: t[0]))  # fmt: skip
    body = {"site_id": site, "metrics": metrics, "date_range": [iso(start), iso(end)],
            "dimensions": dimensions, "filters": filters, "order_by": [list(t) for t in order_by],
            "pagination": {"limit": page[0], "offset": page[1]},
            "include": {"total_rows": True}}  # fmt: skip
    if compare == "custom":
        custom = [iso(BASE + timedelta(seconds=1800)), iso(BASE + timedelta(seconds=9000))]
        body["include"] = {"total_rows": True, "comparisons": {"mode": "custom",
                           "date_range": custom}}  # fmt: skip
    elif compare:
        body["include"] = {"total_rows": True, "comparisons": {"mode": compare}}
    q = with_goals(parse_query(body, BASE), [goals[i] for i in sorted(goals)])
    root = write(tmp_path, recs, storage)
    got = stats.run(ENGINE, q, root, BASE, TIMEOUT, fast_key=PLANS[plan])
    if plan != "exact":
        assert suspect_in_sql(root, q, PLANS[plan], start) == suspect_in_python(
            recs, plan, site, start, end
        )
    want, total, dropped = model_answer(recs, q, compare)
    assert got["meta"]["total_rows"] == total
    assert got["results"] == want
    if {"total_revenue", "average_revenue"} & set(metrics):
        assert got["meta"]["revenue_dropped_events"] == dropped


def test_timeout_edge_ties_and_range_ends(tmp_path: Path) -> None:
    """Exactly the timeout apart: one visit; a second more: two. A visit started before
    ``from`` is not counted, nor are its events in the range; events after ``to`` are not
    read (the crossing visit's duration stops at its last event before ``to``)."""

    def rec(user: str, t: float, kind: str = "page_view", page: str = "/") -> dict[str, Any]:
        ts = iso(BASE + timedelta(seconds=t))
        return {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": ts,
                "event_type": kind, "received_at": ts,
                "payload": {"page_url": f"https://a.example{page}"}}  # fmt: skip

    recs = [
        rec("same", 3600),
        rec("same", 3600 + TIMEOUT, page="/b"),  # one visit, 1800 s
        rec("split", 3600),
        rec("split", 3600 + TIMEOUT + 1),  # two bounces
        rec("before", 3000),
        rec("before", 3700),  # started before from: not counted
        rec("cross", 7000),
        rec("cross", 7150),
        rec("cross", 7300),  # crosses to (7200)
    ]
    root = write(tmp_path, recs)
    body = {"site_id": "a.example", "metrics": ["visitors", "visits", "pageviews",
            "bounce_rate", "visit_duration"],
            "date_range": [iso(BASE + timedelta(seconds=3600)),
                           iso(BASE + timedelta(seconds=7200))]}  # fmt: skip
    got = stats.run(ENGINE, parse_query(body, BASE), root, BASE, TIMEOUT)
    # visits: same(1800 s), split x2 (0 s), cross (150 s, 2 pageviews before to)
    assert got["results"] == [{"metrics": [3, 4, 6, 50, round((1800 + 150) / 4)],
                               "dimensions": []}]  # fmt: skip


# URLs of several schemes (or none) and bare paths.
PREFIXES = st.sampled_from(["https://", "http://", "/", "HTTPS://", "ftp://", "https:/", ""])


# A URL's delimiters, often: where the SQL and the Python rules could part.
TAILS = st.text(st.sampled_from("/?#:@.aZ\né🙂"), max_size=30) | st.text(max_size=30)


@given(st.sampled_from(URLS[:-1]) | st.builds(lambda a, b: a + b, PREFIXES, TAILS))
@example("https://a/b#c?d")
@example("http://a?b/c")
@example("https://a#/b")
@example("https://u@a:1")
@example("/p#x?y")
@settings(HYPOTHESIS, max_examples=200)  # one small statement each
def test_site_rules_in_sql_are_the_python_ones(url: str) -> None:
    sql = f"SELECT {path_sql('u')}, {host_sql('u')}, {SITE_SQL.replace('page_url', 'u')} " \
          "FROM (SELECT $u AS u, '{}'::JSON AS payload)"  # fmt: skip
    got = ENGINE.fetch(sql, {"u": url})[0]
    assert got == (path_of(url), host_of(url), host_of(url))


@pytest.mark.parametrize(
    ("payload", "site"),
    [({"domain": "x.com", "page_url": "https://y.com/"}, "x.com"),
     ({"site": "s.com", "page_url": "https://y.com/"}, "s.com"),
     ({"page_url": "https://www.Y.com:443/a"}, "y.com"), ({}, None)],
)  # fmt: skip
def test_site_rule(payload: dict[str, Any], site: str | None) -> None:
    from event_analytics.sites import site_of

    assert site_of(payload) == site
