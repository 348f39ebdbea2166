"""DuckDB's funnel, retention and breakdown answers against the Python model
(tests/analytics_model.py), on archive files written by the archiver's own file code."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.analytics import funnel, query, retention
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.spec import FunnelSpec, QuerySpec, RetentionSpec
from event_analytics.archive.compact import compact_closed, covered
from tests import analytics_model as model

BASE = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)  # hour and day edges inside the data
TYPES = ["page_view", "signup", "purchase"]
PAGES = ["https://shop.example/pricing", "https://shop.example/blog/a", "https://shop.example/"]
PLANS = ["pro", "team", "free", None]
ENGINE = QueryEngine(max_concurrent=1, timeout_s=60)
HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def iso(ts: datetime) -> str:
    return ts.isoformat()[:-6] + "Z"


@st.composite
def records(draw: st.DrawFn, span_s: int = 400, users: int = 4, per_user: int = 12):
    out = []
    for u in range(draw(st.integers(2, users))):
        for _ in range(draw(st.integers(per_user // 2, per_user))):
            # Few distinct offsets: ties of timestamps (and of receive times) are common.
            offset = draw(st.integers(0, span_s // 10)) * 10 + draw(st.sampled_from([0, 0, 0.5]))
            ts = BASE + timedelta(seconds=offset)
            kind = draw(st.sampled_from(TYPES))
            payload: dict[str, Any] = {}
            if kind == "page_view" or draw(st.booleans()):
                payload["page_url"] = draw(st.sampled_from(PAGES))
            plan = draw(st.sampled_from(PLANS))
            if plan is not None:
                payload["plan"] = plan
            if draw(st.booleans()):
                payload["n"] = draw(st.integers(0, 3))
            received = BASE + timedelta(seconds=draw(st.sampled_from([0, 1, 2])))
            out.append(
                {
                    "event_id": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
                    "user_id": f"u{u}",
                    "timestamp": iso(ts),
                    "event_type": kind,
                    "payload": payload,
                    "received_at": iso(received),
                }
            )
    return out


def steps_strategy() -> st.SearchStrategy[dict[str, Any]]:
    plain = st.builds(lambda t: {"event_type": t}, st.sampled_from(TYPES))
    return st.one_of(
        plain,
        plain,
        plain,
        st.builds(
            lambda u: {"event_type": "page_view", "page_url": u},
            st.sampled_from([*PAGES, "https://shop.example/blog/*", "*pricing"]),
        ),
        st.builds(
            lambda t, plans: {"event_type": t, "where": [["is", "plan", plans]]},
            st.sampled_from(TYPES),
            st.lists(st.sampled_from(["pro", "team", "free"]), min_size=1, max_size=2),
        ),
        st.builds(
            lambda t: {"event_type": t, "where": [["not", ["is", "plan", ["free"]]]]},
            st.sampled_from(TYPES),
        ),
    )


STORAGE = st.sampled_from(["jsonl", "parquet", "parquet+tail"])


def write(tmp_path: Path, recs: list[dict[str, Any]], storage: str = "jsonl") -> Path:
    """The records in hour files; with ``parquet`` every hour compacted; with
    ``parquet+tail`` the second half appended after compaction (late events)."""
    root = tmp_path / f"archive-{uuid.uuid4().hex[:8]}"
    if storage == "jsonl":
        model.archive(root, recs)
        return root
    half = len(recs) // 2 if storage == "parquet+tail" else len(recs)
    model.archive(root, recs[:half])
    hours, _ = compact_closed(root, datetime(9000, 1, 1, tzinfo=UTC))
    assert hours == len(list(root.rglob("*.jsonl")))
    model.archive(root, recs[half:])
    return root


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def same_steps(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [s["users"] for s in got] == [s["users"] for s in want]
    for g, w in zip(got, want, strict=True):
        assert close(g["median_s_from_previous"], w["median_s_from_previous"]), (g, w)
        assert close(g["average_s_from_previous"], w["average_s_from_previous"]), (g, w)
    first = want[0]["users"]
    for g, w in zip(got, want, strict=True):
        assert close(g["conversion_from_start"], w["users"] / first if first else 0.0)


@pytest.mark.slow
@HYPOTHESIS
@given(
    recs=records(),
    steps=st.lists(steps_strategy(), min_size=2, max_size=4),
    order=st.sampled_from(["ordered", "strict", "any"]),
    window=st.sampled_from([100, 1000, 1, 10, 30]),
    start_s=st.sampled_from([0, 50, 200]),
    length_s=st.sampled_from([500, 150, 30]),
    breakdown=st.sampled_from([None, None, "page_url", "event_type", "property:plan"]),
    storage=STORAGE,
    tie_free=st.booleans(),
    fast_key=st.sampled_from([funnel.FAST_KEY, funnel.FAST_KEY, "hash(user_id) % 2"]),
)
def test_funnel_matches_model(
    tmp_path: Path,
    recs: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    order: str,
    window: int,
    start_s: int,
    length_s: int,
    breakdown: str | None,
    storage: str,
    tie_free: bool,
    fast_key: str,
) -> None:
    """Both plans: ``records`` makes timestamp ties common (the fast plan must see them
    and give way to the exact one); ``tie_free`` keeps one event per user and timestamp
    (the fast plan answers, on the same grid of times, so window edges are hit);
    ``hash(user_id) % 2`` makes users share a number."""
    if tie_free:
        recs = list({(r["user_id"], model.ts_of(r)): r for r in reversed(recs)}.values())[::-1]
    body = {
        "from": iso(BASE + timedelta(seconds=start_s)),
        "to": iso(BASE + timedelta(seconds=start_s + length_s)),
        "steps": steps,
        "window_s": window,
        "order": order,
        "breakdown": breakdown,
    }
    spec = FunnelSpec.model_validate(body)
    root = write(tmp_path, recs, storage)
    got = funnel.run(ENGINE, spec, root, BASE, fast_key)
    with hour_files(root, spec.start, spec.end + timedelta(seconds=window)) as files:
        fast = ENGINE.fetch(*funnel.build(spec, files, fast_key))
        exact = ENGINE.fetch(*funnel.build(spec, files, None))
    suspect = any(row[-1] for row in fast)
    if tie_free and fast_key == funnel.FAST_KEY:
        assert not suspect, "no ties and no shared hash, yet the fast plan gave way"
    if not suspect:  # the fast plan's answer is the exact plan's
        assert len(fast) == len(exact)
        for f, e in zip(fast, exact, strict=True):
            values = zip(f[1:-1], e[1:-1], strict=True)
            assert f[0] == e[0] and all(close(a, b) for a, b in values), (f, e)
    want = model.funnel(recs, {**body, "from": body["from"][:-1] + "+00:00",
                               "to": body["to"][:-1] + "+00:00"})  # fmt: skip
    if breakdown is None:
        same_steps(got["steps"], want["steps"])
    else:
        assert [b["value"] for b in got["breakdowns"]] == [b["value"] for b in want["breakdowns"]]
        for g, w in zip(got["breakdowns"], want["breakdowns"], strict=True):
            same_steps(g["steps"], w["steps"])


@pytest.mark.slow
@HYPOTHESIS
@given(
    recs=records(span_s=4 * 86400, users=5, per_user=10),
    period=st.sampled_from(["hour", "day", "week", "month"]),
    periods=st.integers(1, 4),
    kind=st.sampled_from(["first_time", "recurring"]),
    cohort=steps_strategy(),
    back=st.sampled_from([steps_strategy(), st.just({"event_type": "page_view"})]).flatmap(
        lambda s: s
    ),
    start_days=st.sampled_from([-40, -1, 0, 1]),
    length_days=st.sampled_from([1, 2, 10, 40]),
    until_days=st.sampled_from([0, 1, 3, 100]),
    storage=STORAGE,
)
def test_retention_matches_model(
    tmp_path: Path,
    recs: list[dict[str, Any]],
    period: str,
    periods: int,
    kind: str,
    cohort: dict[str, Any],
    back: dict[str, Any],
    start_days: int,
    length_days: int,
    until_days: int,
    storage: str,
) -> None:
    start = BASE.replace(hour=0) + timedelta(days=start_days, hours=start_days % 3)
    end = start + timedelta(days=length_days)
    if period == "hour":
        end = start + timedelta(hours=length_days * 5)
    body = {"from": iso(start), "to": iso(end), "period": period, "periods": periods,
            "cohort_event": cohort, "return_event": back, "type": kind}  # fmt: skip
    until = BASE + timedelta(days=until_days)
    got = retention.run(
        ENGINE, RetentionSpec.model_validate(body), write(tmp_path, recs, storage), until
    )
    want = model.retention(recs, {**body, "from": start.isoformat(), "to": end.isoformat()}, until)
    assert [c["start"] for c in got["cohorts"]] == [iso(c["start"]) for c in want["cohorts"]]
    for g, w in zip(got["cohorts"], want["cohorts"], strict=True):
        assert g["values"] == w["values"], (g, w)
        assert g["complete"] == w["complete"]
        assert g["users"] == g["values"][0]
    assert all(close(g, w) for g, w in zip(got["mean"], want["mean"], strict=True))


FILTERS = st.one_of(
    st.builds(lambda v: ["is", "event_type", v], st.lists(st.sampled_from(TYPES), min_size=1)),
    st.builds(lambda v: ["contains", "page_url", [v]], st.sampled_from(["/blog/", "pricing"])),
    st.builds(lambda v: ["is_not", "property:plan", [v]], st.sampled_from(["pro", "free"])),
    st.builds(lambda v: ["matches", "page_url", [v]], st.sampled_from(["^https://shop", "a$"])),
    st.builds(lambda v: ["not", ["is", "property:n", [v]]], st.integers(0, 3)),
    st.builds(
        lambda a, b: ["or", [["is", "event_type", [a]], ["is", "property:plan", [b]]]],
        st.sampled_from(TYPES),
        st.sampled_from(["team", "pro"]),
    ),
)
DIMENSIONS = ["event_type", "page_url", "property:plan", "property:n", "time:minute",
              "time:hour", "time:day", "time:week", "time:month"]  # fmt: skip
METRICS = ["events", "visitors", "events_per_visitor"]


@pytest.mark.slow
@HYPOTHESIS
@given(
    recs=records(span_s=2 * 86400, users=5, per_user=10),
    metrics=st.lists(st.sampled_from(METRICS), min_size=1, max_size=3, unique=True),
    dimensions=st.lists(st.sampled_from(DIMENSIONS), max_size=2, unique=True).filter(
        lambda ds: sum(d.startswith("time:") for d in ds) <= 1
    ),
    filters=st.lists(FILTERS, max_size=2),
    data=st.data(),
    limit=st.sampled_from([1, 3, 100]),
    offset=st.sampled_from([0, 0, 2, 50]),
    hours=st.sampled_from([1, 12, 60]),
    storage=STORAGE,
)
def test_query_matches_model(
    tmp_path: Path,
    recs: list[dict[str, Any]],
    metrics: list[str],
    dimensions: list[str],
    filters: list[Any],
    data: st.DataObject,
    limit: int,
    offset: int,
    hours: int,
    storage: str,
) -> None:
    names = metrics + dimensions
    order_by = data.draw(
        st.lists(
            st.tuples(st.sampled_from(names), st.sampled_from(["asc", "desc"])),
            max_size=2,
            unique_by=lambda t: t[0],
        )
    )
    start = BASE - timedelta(hours=1)
    end = start + timedelta(hours=hours)
    body = {"date_range": [iso(start), iso(end)], "metrics": metrics, "dimensions": dimensions,
            "filters": filters, "order_by": [list(t) for t in order_by],
            "pagination": {"limit": limit, "offset": offset}}  # fmt: skip
    spec = QuerySpec.model_validate(body)
    got = query.run(ENGINE, spec, write(tmp_path, recs, storage), BASE, BASE)
    want = model.query(recs, body, start, end)
    assert got["meta"]["total_rows"] == want["total_rows"]
    expected = [
        {"dimensions": [model.iso_or(v) for v in r["dimensions"]], "metrics": r["metrics"]}
        for r in want["results"]
    ]
    assert got["results"] == expected


def test_torn_and_growing_tails_are_never_counted(tmp_path: Path) -> None:
    """A complete-looking record without its newline (a crash between the record and its
    newline) and a half-written one are both left out; the lines before them count."""
    recs = [
        {"event_id": str(uuid.uuid4()), "user_id": f"u{i}", "timestamp": iso(BASE),
         "event_type": "signup", "payload": {}, "received_at": iso(BASE)}
        for i in range(3)
    ]  # fmt: skip
    root = write(tmp_path, recs[:2])
    path = next(root.rglob("*.jsonl"))
    import orjson

    body = {"date_range": [iso(BASE), iso(BASE + timedelta(hours=1))], "metrics": ["events"]}
    spec = QuerySpec.model_validate(body)
    for tail in (orjson.dumps(recs[2]), orjson.dumps(recs[2])[:40]):
        with path.open("ab") as f:
            f.write(tail)
        got = query.run(ENGINE, spec, root, BASE, BASE)
        assert got["results"][0]["metrics"] == [2], tail
        with path.open("r+b") as f:  # back to the two whole lines
            f.truncate(path.stat().st_size - len(tail))


@pytest.mark.parametrize("kind", ["funnel", "retention", "query"])
def test_empty_archive_answers_zeros(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "nothing"
    if kind == "funnel":
        spec = FunnelSpec.model_validate(
            {
                "from": iso(BASE),
                "to": iso(BASE + timedelta(days=1)),
                "steps": [{"event_type": "a"}, {"event_type": "b"}],
            }
        )
        assert [s["users"] for s in funnel.run(ENGINE, spec, root, BASE)["steps"]] == [0, 0]
    elif kind == "retention":
        rspec = RetentionSpec.model_validate(
            {
                "from": iso(BASE),
                "to": iso(BASE + timedelta(days=2)),
                "period": "day",
                "periods": 2,
                "cohort_event": {"event_type": "a"},
                "return_event": {"event_type": "b"},
            }
        )
        got = retention.run(ENGINE, rspec, root, BASE)
        assert [c["values"] for c in got["cohorts"]] == [[0, 0, 0], [0, 0, 0]]
    else:
        qspec = QuerySpec.model_validate({"date_range": "7d", "metrics": ["events", "visitors"]})
        got = query.run(ENGINE, qspec, root, BASE, BASE)
        assert got["results"] == [{"dimensions": [], "metrics": [0, 0]}]


def test_a_copy_is_used_only_while_it_matches_its_jsonl(tmp_path: Path) -> None:
    """A Parquet copy whose JSONL was replaced (another inode) is not read, and a copy
    never hides events appended after it."""
    recs = [
        {"event_id": str(uuid.uuid4()), "user_id": f"u{i}", "timestamp": iso(BASE),
         "event_type": "signup", "payload": {}, "received_at": iso(BASE)}
        for i in range(5)
    ]  # fmt: skip
    root = write(tmp_path, recs[:3], "parquet")
    (jsonl,) = root.rglob("*.jsonl")
    assert covered(jsonl) is not None
    spec = QuerySpec.model_validate(
        {"date_range": [iso(BASE), iso(BASE + timedelta(hours=1))], "metrics": ["events"]}
    )
    with hour_files(root, BASE, BASE + timedelta(hours=1)) as found:
        assert found.parquet and not found.jsonl  # the copy alone answers
    model.archive(root, recs[3:4])
    assert query.run(ENGINE, spec, root, BASE, BASE)["results"][0]["metrics"] == [4]
    # The same file name, another file: the copy no longer proves anything.
    replacement = jsonl.with_suffix(".new")
    replacement.write_bytes(jsonl.read_bytes().split(b"\n", 1)[1])
    replacement.replace(jsonl)
    assert covered(jsonl) is None
    assert query.run(ENGINE, spec, root, BASE, BASE)["results"][0]["metrics"] == [3]


def test_breakdown_value_is_the_chosen_chains_even_when_missing(tmp_path: Path) -> None:
    """The chain reaching furthest has no plan; a later entry (shorter chain) has one:
    the user is counted under (none), as the model says."""

    def rec(t: int, kind: str, **payload: Any) -> dict[str, Any]:
        ts = iso(BASE + timedelta(seconds=t))
        return {"event_id": str(uuid.uuid4()), "user_id": "u1", "timestamp": ts,
                "event_type": kind, "payload": payload, "received_at": ts}  # fmt: skip

    recs = [rec(0, "signup"), rec(10, "purchase"), rec(20, "signup", plan="pro")]
    body = {"from": iso(BASE), "to": iso(BASE + timedelta(hours=1)), "window_s": 3600,
            "steps": [{"event_type": "signup"}, {"event_type": "purchase"}],
            "breakdown": "property:plan"}  # fmt: skip
    got = funnel.run(ENGINE, FunnelSpec.model_validate(body), write(tmp_path, recs), BASE)
    want = model.funnel(recs, {**body, "from": BASE.isoformat(),
                               "to": (BASE + timedelta(hours=1)).isoformat()})  # fmt: skip
    assert [b["value"] for b in got["breakdowns"]] == [b["value"] for b in want["breakdowns"]]
    assert got["breakdowns"][0]["value"] == "(none)"
    assert [s["users"] for s in got["breakdowns"][0]["steps"]] == [1, 1]


@pytest.mark.parametrize("clash", ["user", "timestamp"])
def test_fast_funnel_plan_gives_way_when_its_order_is_not_exact(tmp_path: Path, clash: str) -> None:
    """Two users with one user number (u0 and u1 under ``hash % 2``) would pass for one
    user; a user's two events at one timestamp need (received_at, event_id) to order them.
    The fast plan flags both, and the answer is the exact plan's (the model's)."""
    second = ("u1", 5) if clash == "user" else ("u0", 0)
    rows = [("u0", 0, "page_view"), (*second, "page_view"), ("u0", 10, "signup")]
    recs = [
        {"event_id": str(uuid.UUID(int=i + 1)), "user_id": u, "event_type": kind,
         "timestamp": iso(BASE + timedelta(seconds=t)), "payload": {}, "received_at": iso(BASE)}
        for i, (u, t, kind) in enumerate(rows)
    ]  # fmt: skip
    body = {"from": iso(BASE), "to": iso(BASE + timedelta(minutes=1)), "window_s": 60,
            "steps": [{"event_type": "page_view"}, {"event_type": "signup"}]}  # fmt: skip
    spec = FunnelSpec.model_validate(body)
    root = write(tmp_path, recs)
    with hour_files(root, spec.start, spec.end + timedelta(minutes=1)) as files:
        fast = ENGINE.fetch(*funnel.build(spec, files, "hash(user_id) % 2"))
    assert [row[-1] for row in fast] == [True], fast
    got = funnel.run(ENGINE, spec, root, BASE, "hash(user_id) % 2")["steps"]
    want = model.funnel(recs, {**body, "from": body["from"][:-1] + "+00:00",
                               "to": body["to"][:-1] + "+00:00"})["steps"]  # fmt: skip
    entered = 2 if clash == "user" else 1
    assert [s["users"] for s in got] == [s["users"] for s in want] == [entered, 1]
    same_steps(got, want)


@pytest.mark.parametrize("order", ["ordered", "any"])
def test_fast_funnel_at_the_window_edges(tmp_path: Path, order: str) -> None:
    """The fast plan's chains (the next step's time from the sorted events) at the
    window's edges: an event exactly ``window_s`` after the entry counts, one a second
    later does not, and a later entry can reach further than an earlier one (user e:
    from 0 s only step 2 is in the window, from 6 s all three)."""
    users = {
        "a": [(0, "page_view"), (10, "signup"), (30, "purchase")],
        "b": [(0, "page_view"), (10, "signup"), (31, "purchase")],
        "c": [(0, "page_view"), (30, "signup")],
        "d": [(0, "page_view"), (31, "signup")],
        "e": [(0, "page_view"), (5, "signup"), (6, "page_view"), (20, "signup"), (36, "purchase")],
    }
    body = {"from": iso(BASE), "to": iso(BASE + timedelta(minutes=1)), "window_s": 30,
            "order": order, "steps": [{"event_type": "page_view"}, {"event_type": "signup"},
                                      {"event_type": "purchase"}]}  # fmt: skip
    got, want = _fast_funnel(tmp_path, users, body)
    assert [s["users"] for s in got] == [s["users"] for s in want] == [5, 4, 2]
    if order == "ordered":  # step 2 from a, b, c (10, 10, 30 s) and e's 6 s entry (14 s)
        assert [s["median_s_from_previous"] for s in got] == [None, 12.0, 18.0]
    same_steps(got, want)


def test_fast_funnel_steps_past_repeated_events(tmp_path: Path) -> None:
    """The fast ordered plan finds step k > 2 from the step k-1 event among that user's
    step k-1 and step k events only: a repeat of step k-1 (or of step k before it) lies
    between the event and its next step-k match, which still counts (g reaches all four
    steps; h's purchase comes before its add_to_cart, so h stops at step 3)."""
    users = {
        "g": [(0, "page_view"), (2, "signup"), (3, "signup"), (4, "add_to_cart"),
              (5, "add_to_cart"), (6, "purchase")],
        "h": [(0, "page_view"), (1, "add_to_cart"), (2, "signup"), (3, "purchase"),
              (4, "add_to_cart")],
    }  # fmt: skip
    steps = [{"event_type": k} for k in ("page_view", "signup", "add_to_cart", "purchase")]
    body = {"from": iso(BASE), "to": iso(BASE + timedelta(minutes=1)), "window_s": 60,
            "steps": steps}  # fmt: skip
    got, want = _fast_funnel(tmp_path, users, body)
    assert [s["users"] for s in got] == [s["users"] for s in want] == [2, 2, 2, 1]
    same_steps(got, want)


def _fast_funnel(
    tmp_path: Path, users: dict[str, list[tuple[int, str]]], body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The funnel's steps over ``users``' events (seconds after BASE, type), checked to
    be the fast plan's answer, and the model's steps."""
    recs = [
        {"event_id": str(uuid.uuid4()), "user_id": u, "event_type": kind,
         "timestamp": iso(BASE + timedelta(seconds=t)), "payload": {}, "received_at": iso(BASE)}
        for u, events in users.items() for t, kind in events
    ]  # fmt: skip
    spec = FunnelSpec.model_validate(body)
    root = write(tmp_path, recs)
    with hour_files(root, spec.start, spec.end + timedelta(minutes=1)) as files:
        fast = ENGINE.fetch(*funnel.build(spec, files))
    assert [row[-1] for row in fast] == [False], fast  # the fast plan answers
    got = funnel.run(ENGINE, spec, root, BASE)["steps"]
    want = model.funnel(recs, {**body, "from": body["from"][:-1] + "+00:00",
                               "to": body["to"][:-1] + "+00:00"})["steps"]  # fmt: skip
    return got, want
