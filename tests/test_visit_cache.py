"""The visit cache (analytics/visit_cache.py): answers from a warm entry equal the model
and a run without the cache; every change to the archive files a range reads (a late
event, a compaction, an erasure, retention's deletion, an import's new hour file) gives
the new answer; the memory bound evicts the least recently used entry."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from event_analytics import expiry
from event_analytics.analytics import stats
from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.stats_spec import StatsQuery, parse_query, with_goals
from event_analytics.archive import files
from event_analytics.archive.compact import compact_closed
from event_analytics.archive.erase import erase
from tests import analytics_model
from tests.test_analytics_model import ENGINE, HYPOTHESIS, STORAGE, iso, write
from tests.test_visits_model import BASE, SITE_GOALS, TIMEOUT, model_answer, sequences

MB = 1024**2
CACHED = QueryEngine(max_concurrent=2, timeout_s=60, visit_cache_bytes=256 * MB)
TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"]
START, END = BASE + timedelta(hours=1), BASE + timedelta(hours=6)


def _bodies(site: str) -> list[tuple[dict[str, Any], str | None]]:
    """The site page's kinds of query (benchmarks/site_page_bench.py) and the comparison
    each asks for."""
    rng = [iso(START), iso(END)]
    prev = {"comparisons": {"mode": "previous_period"}}
    return [
        ({"site_id": site, "metrics": TOP, "date_range": rng, "include": prev},
         "previous_period"),
        ({"site_id": site, "metrics": ["visitors"], "dimensions": ["time:hour"],
          "date_range": rng, "include": prev}, "previous_period"),
        ({"site_id": site, "metrics": ["visitors", "pageviews"], "dimensions": ["event:page"],
          "date_range": rng, "pagination": {"limit": 3}, "include": {"total_rows": True}}, None),
        ({"site_id": site, "metrics": ["visitors", "bounce_rate"],
          "dimensions": ["visit:source"], "filters": [["is_not", "event:page", ["/x"]]],
          "date_range": rng}, None),
        ({"site_id": site, "metrics": ["visitors", "events", "conversion_rate",
                                       "total_revenue"],
          "dimensions": ["event:goal"], "date_range": rng}, None),
        ({"site_id": site, "metrics": ["visits", "visit_duration"],
          "dimensions": ["visit:entry_page"], "date_range": rng,
          "filters": [["has_done", ["is", "event:name", ["Signup"]]]]}, None),
    ]  # fmt: skip


def _query(site: str, which: int) -> tuple[StatsQuery, str | None]:
    body, compare = _bodies(site)[which]
    return with_goals(parse_query(body, BASE), SITE_GOALS), compare


def _model(recs: list[dict[str, Any]], q: StatsQuery, compare: str | None) -> list[Any]:
    return model_answer(recs, q, compare)[0]


def _run(engine: QueryEngine, q: StatsQuery, root: Path) -> dict[str, Any]:
    return stats.run(engine, q, root, BASE, TIMEOUT)


@given(
    recs=sequences(),
    site=st.sampled_from(["a.example", "b.example"]),
    which=st.integers(0, len(_bodies("")) - 1),
    storage=STORAGE,
)
@HYPOTHESIS
def test_warm_answers_equal_the_model_and_a_cold_run(
    tmp_path: Path, recs: list[dict[str, Any]], site: str, which: int, storage: str
) -> None:
    q, compare = _query(site, which)
    root = write(tmp_path, recs, storage)
    cache = CACHED.visit_cache
    misses, hits = cache.misses, cache.hits
    n = 2 if compare else 1  # the range's entry, and its comparison's
    filled = _run(CACHED, q, root)
    assert (cache.misses, cache.hits) == (misses + n, hits)
    warm = _run(CACHED, q, root)
    assert (cache.misses, cache.hits) == (misses + n, hits + n)
    assert warm == filled == _run(ENGINE, q, root)
    assert warm["results"] == _model(recs, q, compare)


def _apart(batch: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``batch`` with each timestamp moved by a few microseconds of its own: no appended
    event ties with another (a tie the fast plan finds makes the entry filled again by
    the exact plan, exactly, but not by the update this test means to see)."""
    out = []
    for i, r in enumerate(batch):
        ts = analytics_model.ts_of(r) + timedelta(microseconds=7 * (100 * n + i + 1))
        out.append({**r, "timestamp": iso(ts)})
    return out


@given(
    recs=sequences(),
    more=st.lists(sequences(), min_size=1, max_size=3),
    site=st.sampled_from(["a.example", "b.example"]),
    which=st.integers(0, len(_bodies("")) - 1),
    storage=STORAGE,
    apart=st.booleans(),
)
@HYPOTHESIS
def test_lines_appended_between_queries_bring_the_entry_up_to_the_model(
    tmp_path: Path, recs: list[dict[str, Any]], more: list[list[dict[str, Any]]], site: str,
    which: int, storage: str, apart: bool,
) -> None:  # fmt: skip
    """Batches of events appended between two queries of a range (to the hours being
    written, late to older hours, to hours that had no file): each answer is the model's
    of everything appended so far and a cold run's; with no appended event tied to
    another, the entry is never filled again: brought up by the appended lines."""
    q, compare = _query(site, which)
    root = write(tmp_path, recs, storage)
    cache = CACHED.visit_cache
    sent = list(recs)
    assert _run(CACHED, q, root)["results"] == _model(sent, q, compare)
    for n, batch in enumerate(more):
        batch = _apart(batch, n) if apart else batch
        analytics_model.archive(root, batch)
        sent += batch
        misses, updates, bypasses = cache.misses, cache.updates, cache.bypasses
        got = _run(CACHED, q, root)
        assert got["results"] == _model(sent, q, compare)
        assert got == _run(ENGINE, q, root)
        if apart:  # (else a tie may make it filled again, or answered without: _churning)
            assert (cache.misses, cache.bypasses) == (misses, bypasses)
            # The range's read window holds an appended event: its entry was brought up.
            window = (q.start - timedelta(seconds=TIMEOUT)).replace(minute=0, second=0)
            touched = any(window <= analytics_model.ts_of(r) < q.end for r in batch)
            assert cache.updates > updates or not touched


def _rec(user: str, seconds: float, kind: str = "page_view", site: str = "a.example",
         page: str = "/") -> dict[str, Any]:  # fmt: skip
    ts = iso(BASE + timedelta(seconds=seconds))
    payload: dict[str, Any] = {"domain": site, "page_url": f"https://{site}{page}"}
    if kind != "page_view":
        payload["event_name"] = kind
    return {"event_id": str(uuid.uuid4()), "user_id": user, "timestamp": ts,
            "event_type": "page_view" if kind == "page_view" else "custom",
            "received_at": ts, "payload": payload}  # fmt: skip


# Hours 1-5 of BASE: visitors u0..u5, each with visits in several hours.
RECS = [
    _rec(f"u{i}", 3600 * h + 60 * i + s, page=f"/p{(i + s) % 3}")
    for i in range(6)
    for h in (1, 2, 4)
    for s in (0, 30)
]


class _Page:
    """The checks of every invalidation case: the cached answer of each query kind is the
    model's of ``recs``, and the change made a new key (a miss) for its range."""

    def __init__(self, tmp_path: Path, recs: list[dict[str, Any]], storage: str = "jsonl"):
        self.recs = list(recs)
        self.root = write(tmp_path, self.recs, storage)
        self.cache = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=64 * MB)

    def check(self, changed: str | None) -> None:
        """``changed``: what the first query after the change does for its range: fill it
        again ("miss"), bring its entry up to the files ("update"), or read it (None)."""
        cache = self.cache.visit_cache
        for which in range(len(_bodies(""))):
            q, compare = _query("a.example", which)
            misses, updates = cache.misses, cache.updates
            got = _run(self.cache, q, self.root)
            assert got["results"] == _model(self.recs, q, compare), which
            assert got == _run(ENGINE, q, self.root)
            if which == 0:
                # The first query after the change: a new key; filled or brought up.
                assert (cache.misses > misses) == (changed == "miss")
                assert (cache.updates > updates) == (changed == "update")
        assert cache.misses > 0 and cache.hits > 0

    def first(self) -> None:
        """Fill, then see it answered from the entries."""
        self.check(changed="miss")
        self.check(changed=None)


def test_a_late_event_appended_to_an_hour_gives_the_new_answer(tmp_path: Path) -> None:
    page = _Page(tmp_path, RECS, "parquet")
    page.first()
    late = [_rec("late", 3600 * 2 + 5, page="/p9"), _rec("u1", 3600 * 4 + 100, "Signup")]
    analytics_model.archive(page.root, late)  # appended after the compacted copy
    page.recs += late
    visitors = page.cache.visit_cache.updated_visitors
    page.check(changed="update")
    # Only the two visitors of the late lines were cut into visits again (the comparison's
    # range reads none of their hours: its entry is read as it is).
    assert page.cache.visit_cache.updated_visitors - visitors == 2


def test_a_compaction_makes_a_new_key_and_the_same_answer(tmp_path: Path) -> None:
    page = _Page(tmp_path, RECS)
    page.first()
    hours, _ = compact_closed(page.root, datetime(9000, 1, 1, tzinfo=UTC))
    assert hours > 0
    visitors = page.cache.visit_cache.updated_visitors
    page.check(changed="update")  # the same lines, from the copies: no visitor cut again
    assert page.cache.visit_cache.updated_visitors == visitors


def test_an_erasure_gives_the_new_answer(tmp_path: Path) -> None:
    page = _Page(tmp_path, RECS, "parquet")
    page.first()
    # u0 and u1 in every hour: each hour file rewritten (a new inode) and its copy redone.
    assert erase(page.root, {"u0", "u1"}).removed == 12
    page.recs = [r for r in page.recs if r["user_id"] not in ("u0", "u1")]
    page.check(changed="miss")


def test_retention_deleting_an_hour_gives_the_new_answer(tmp_path: Path) -> None:
    page = _Page(tmp_path, RECS, "parquet")
    page.first()
    found = files.list_files(page.root)[0]  # hour 1, in the range
    expiry._delete_hour(found, found.size_bytes)  # retention's deletion of one hour
    page.recs = [r for r in page.recs if analytics_model.ts_of(r) >= BASE + timedelta(hours=2)]
    page.check(changed="miss")


def test_an_import_of_a_new_hour_gives_the_new_answer(tmp_path: Path) -> None:
    page = _Page(tmp_path, RECS, "parquet")
    page.first()
    # Import writes an hour that had no file with the archive's own file code (files.locked,
    # files.append), as analytics_model.archive does.
    old = [_rec("imported", 3600 * 3 + 10), _rec("imported", 3600 * 3 + 20, "Purchase")]
    analytics_model.archive(page.root, old)
    page.recs += old
    page.check(changed="update")


def _size_of_one(tmp_path: Path) -> tuple[Path, int]:
    """An archive with two sites of the same events, and the size of one site's entry."""
    twin = [{**r, "payload": {**r["payload"], "domain": "b.example"}} for r in RECS]
    root = write(tmp_path, RECS + twin)
    probe = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=1024 * MB)
    q, _ = _query("a.example", 2)  # no comparison: one entry
    _run(probe, q, root)
    size = probe.visit_cache.size()
    assert size > 0 and len(probe.visit_cache) == 1
    probe.close()
    return root, size


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_memory_bound_evicts_the_least_recently_used(tmp_path: Path) -> None:
    root, size = _size_of_one(tmp_path)
    counted = [_sample("ea_visit_cache_requests_total", outcome=o) for o in ("hit", "miss")]
    evicted = _sample("ea_visit_cache_evictions_total")
    engine = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=size * 3 // 2)
    cache = engine.visit_cache
    qa, _ = _query("a.example", 2)
    qb, _ = _query("b.example", 2)
    want = _run(ENGINE, qa, root)
    assert want["results"]  # the twin site answers the same rows
    assert _run(engine, qa, root) == want  # miss: a's entry
    assert _run(engine, qa, root) == want and cache.hits == 1
    assert _run(engine, qb, root)["results"] == want["results"]
    # b's entry and a's do not both fit: a, the least recently used, went.
    assert cache.evictions == 1 and len(cache) == 1 and cache.size() <= size * 3 // 2
    assert _run(engine, qb, root)["results"] == want["results"] and cache.hits == 2
    assert _run(engine, qa, root) == want and cache.misses == 3 and cache.evictions == 2
    # /metrics counts them (this process's registry, as a scrape reads it).
    assert _sample("ea_visit_cache_requests_total", outcome="hit") == counted[0] + 2
    assert _sample("ea_visit_cache_requests_total", outcome="miss") == counted[1] + 3
    assert _sample("ea_visit_cache_evictions_total") == evicted + 2
    assert _sample("ea_visit_cache_bytes") == cache.size()
    engine.close()


def test_an_entry_over_the_bound_answers_and_is_not_kept(tmp_path: Path) -> None:
    root, size = _size_of_one(tmp_path)
    engine = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=size // 2)
    q, _ = _query("a.example", 2)
    want = _run(ENGINE, q, root)
    assert _run(engine, q, root) == want and _run(engine, q, root) == want
    assert engine.visit_cache.misses == 2 and len(engine.visit_cache) == 0
    # Its database was detached: DuckDB holds no table memory for it.
    held = engine.fetch("SELECT count(*) FROM duckdb_databases() WHERE "
                        "database_name LIKE 'visit_cache_%'")  # fmt: skip
    assert held == [(0,)]
    engine.close()


def test_queries_of_one_range_at_once_cut_it_into_visits_once(tmp_path: Path) -> None:
    root = write(tmp_path, RECS)
    engine = QueryEngine(max_concurrent=2, timeout_s=60, visit_cache_bytes=64 * MB)
    qs = [_query("a.example", which)[0] for which in (2, 3)]
    answers: dict[int, dict[str, Any]] = {}
    go = threading.Barrier(2)

    def one(i: int) -> None:
        go.wait(timeout=30)
        answers[i] = _run(engine, qs[i], root)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [answers[i] for i in range(2)] == [_run(ENGINE, q, root) for q in qs]
    cache = engine.visit_cache
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
    engine.close()


def test_a_range_appended_to_between_its_queries_is_brought_up_not_filled(
    tmp_path: Path,
) -> None:
    """The archiver appending to the hour being written between any two queries of a
    range: each query after an append brings the entry up (only the visitors of the new
    lines cut into visits again), none fills it again; every answer the model's."""
    root = write(tmp_path, RECS, "parquet")
    engine = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=64 * MB)
    cache = engine.visit_cache
    q, _ = _query("a.example", 3)
    recs = list(RECS)
    updated = _sample("ea_visit_cache_requests_total", outcome="update")

    def answer() -> tuple[int, int, int, int, int]:
        assert _run(engine, q, root)["results"] == _model(recs, q, None)
        return cache.misses, cache.hits, cache.bypasses, cache.updates, cache.updated_visitors

    assert answer() == (1, 0, 0, 0, 0)
    for n in range(3):  # the current hour (hour 5, uncompacted) grows; u2 in it twice
        late = [_rec(f"new{n}", 3600 * 5 + 10 * n, page="/late"), _rec("u2", 3600 * 5 + n)]
        analytics_model.archive(root, late)
        recs += late
        assert answer() == (1, 0, 0, n + 1, 2 * (n + 1))
    assert answer() == (1, 1, 0, 3, 6)  # nothing appended: a hit
    late = [_rec("u3", 3600 * 1 + 100, "Signup")]  # a late line in an hour with a copy
    analytics_model.archive(root, late)
    recs += late
    assert answer() == (1, 1, 0, 4, 7)
    assert _sample("ea_visit_cache_requests_total", outcome="update") == updated + 4
    engine.close()


def test_a_range_whose_files_are_rewritten_between_its_queries_is_not_filled_again(
    tmp_path: Path,
) -> None:
    """A fill costs more than one answer: a range whose files changed other than by
    appended lines since its last query, that query's entry never read, is answered
    without filling (exactly), until two queries in a row find the same files."""
    root = write(tmp_path, RECS)
    engine = QueryEngine(max_concurrent=1, timeout_s=60, visit_cache_bytes=64 * MB)
    cache = engine.visit_cache
    q, _ = _query("a.example", 3)
    recs = list(RECS)

    def answer() -> tuple[int, int, int, int]:
        assert _run(engine, q, root)["results"] == _model(recs, q, None)
        return cache.misses, cache.hits, cache.bypasses, len(cache)

    assert answer() == (1, 0, 0, 1)
    for n in range(2):  # an erasure between any two queries: hour files renamed over
        user = f"u{n}"
        assert erase(root, {user}).removed == 6
        recs = [r for r in recs if r["user_id"] != user]
        assert answer() == (1, 0, n + 1, 0)  # the unread entry dropped, none filled
    assert answer() == (2, 0, 2, 1)  # the same files twice in a row: filled
    assert answer() == (2, 1, 2, 1)
    assert erase(root, {"u2"}).removed == 6
    recs = [r for r in recs if r["user_id"] != "u2"]
    assert answer() == (3, 1, 2, 1)  # its last entry was read: filled again
    assert _sample("ea_visit_cache_requests_total", outcome="bypass") >= 2
    engine.close()


def test_queries_at_once_under_a_bound_of_one_entry_answer_right(tmp_path: Path) -> None:
    """Two threads asking two sites' ranges in turn, with room for one entry: entries are
    filled, read, evicted and filled again while the other thread reads; every answer is
    the cold run's, and nothing is left attached but the entries kept."""
    root, size = _size_of_one(tmp_path)
    engine = QueryEngine(max_concurrent=2, timeout_s=60, visit_cache_bytes=size * 3 // 2)
    qs = [_query(site, which)[0] for site in ("a.example", "b.example") for which in (2, 3, 4)]
    want = [_run(ENGINE, q, root)["results"] for q in qs]
    wrong: list[str] = []

    def ask(offset: int) -> None:
        for n in range(12):
            i = (n + offset) % len(qs)
            if _run(engine, qs[i], root)["results"] != want[i]:
                wrong.append(f"query {i}")

    threads = [threading.Thread(target=ask, args=(k * 3,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads) and wrong == []
    cache = engine.visit_cache
    assert cache.evictions > 0 and len(cache) == 1
    attached = engine.fetch(
        "SELECT count(*) FROM duckdb_databases() WHERE database_name LIKE 'visit_cache_%'"
    )
    assert attached == [(1,)]
    engine.close()
