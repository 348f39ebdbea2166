"""The visit queries' two plans (analytics/visits.py): the fast plan (sorted by a hash of
the visitor and the timestamp) answers as the exact plan does, whatever the key, because
it says when its order may be wrong (ties, colliding keys) and the exact plan then runs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from event_analytics.analytics import stats, visits
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.stats_spec import parse_query, with_goals
from tests.test_analytics_model import ENGINE, HYPOTHESIS, STORAGE, iso, write
from tests.test_visits_model import BASE, SITE_GOALS, TIMEOUT, sequences

# A key every visitor shares, one that makes two groups, and the real one.
KEYS = ["0", "hash(user_id) % 2", visits.FAST_KEY]
TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration",
       "events"]  # fmt: skip


def _bodies(site: str) -> list[dict[str, Any]]:
    """The dashboard's queries (benchmarks/analytics_bench.py) over the generated hours."""
    rng = [iso(BASE + timedelta(seconds=3600)), iso(BASE + timedelta(hours=6))]
    return [
        {"site_id": site, "metrics": TOP, "date_range": rng,
         "include": {"comparisons": {"mode": "previous_period"}}},
        {"site_id": site, "metrics": ["visitors", "visits", "bounce_rate", "visit_duration"],
         "date_range": rng, "dimensions": ["visit:entry_page"]},
        {"site_id": site, "metrics": ["visitors", "bounce_rate"], "date_range": rng,
         "dimensions": ["visit:source"], "filters": [["is_not", "event:page", ["/x"]]]},
        {"site_id": site, "metrics": ["visits", "visit_duration"], "date_range": rng,
         "dimensions": ["time:hour"]},
        {"site_id": site, "metrics": ["visitors", "events", "conversion_rate", "total_revenue"],
         "date_range": rng, "dimensions": ["event:goal"]},
    ]  # fmt: skip


@given(
    recs=sequences(),
    site=st.sampled_from(["a.example", "b.example"]),
    which=st.integers(0, 4),
    key=st.sampled_from(KEYS),
    storage=STORAGE,
)
@HYPOTHESIS
def test_fast_plan_answers_as_the_exact_plan(
    tmp_path: Path, recs: list[dict[str, Any]], site: str, which: int, key: str, storage: str
) -> None:
    q = with_goals(parse_query(_bodies(site)[which], BASE), SITE_GOALS)
    root = write(tmp_path, recs, storage)
    exact = stats.run(ENGINE, q, root, BASE, TIMEOUT, fast_key=None)
    assert stats.run(ENGINE, q, root, BASE, TIMEOUT, fast_key=key) == exact


def _suspect(root: Path, key: str) -> bool:
    q = parse_query(_bodies("a.example")[0], BASE)
    start = q.start
    assert start is not None
    with hour_files(root, start - timedelta(seconds=TIMEOUT), q.end) as files:
        rows = ENGINE.fetch(*stats.build(q, files, start, q.end, TIMEOUT, key))
    return bool(rows[0][-1])


def test_fast_plan_says_when_its_order_is_not_exact(tmp_path: Path) -> None:
    def rec(user: str, seconds: float) -> dict[str, Any]:
        ts = iso(BASE + timedelta(seconds=seconds))
        return {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": ts,
                "event_type": "page_view", "received_at": ts,
                "payload": {"domain": "a.example", "page_url": "https://a.example/"}}  # fmt: skip

    apart = write(tmp_path, [rec("u1", 4000), rec("u1", 4100), rec("u2", 4050)])
    assert not _suspect(apart, visits.FAST_KEY)  # distinct keys, no ties: the fast answer
    assert _suspect(apart, "0")  # two visitors on one key
    tie = write(tmp_path, [rec("u1", 4000), rec("u1", 4000), rec("u2", 4050)])
    assert _suspect(tie, visits.FAST_KEY)  # one visitor's two events at one time
