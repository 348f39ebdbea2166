"""The visit cache's fill (analytics/visit_fill.py): by the fast plan (one narrow sort, an
as-of join to the visits' starts, the events joined to that map) it makes the same visits
and events as by the exact plan (``visits.ctes``), or says its order may be wrong (ties,
keys shared by visitors) and makes nothing; restricted to some visitors, their rows."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from event_analytics.analytics import visit_fill, visits
from event_analytics.analytics.snapshot import Sources, hour_files
from tests.test_analytics_model import ENGINE, HYPOTHESIS, STORAGE, write
from tests.test_visits_model import BASE, TIMEOUT, sequences

# A key every visitor shares, one that makes two groups, and the real one.
KEYS = ["0", "hash(user_id) % 2", visits.FAST_KEY]
START, END = BASE + timedelta(hours=1), BASE + timedelta(hours=6)
_dbs = itertools.count(1)


def _fill(root: Path, site: str, plan: str | None, only: list[str] | None = None,
          old: bool = False) -> str | None:  # fmt: skip
    """A database holding the tables (None: the fast plan said its order may be wrong);
    ``old``: the copies read as copies of the older schema (their columns derived)."""
    db = f"fill_test_{next(_dbs)}"
    ENGINE.fetch(f"ATTACH ':memory:' AS {db}")
    table = None
    if only is not None:
        uk = plan or "user_id"
        values = ", ".join(f"('{u}')" for u in only) or "(NULL::VARCHAR)"
        table = f"{db}.only"
        ENGINE.fetch(f"CREATE TABLE {table} AS SELECT DISTINCT {uk} AS uk FROM "
                     f"(VALUES {values}) AS t(user_id) WHERE user_id IS NOT NULL")  # fmt: skip
    with hour_files(root, START - timedelta(seconds=TIMEOUT), END) as files:
        if old:
            files = Sources(parquet_old=files.parquet, jsonl=files.jsonl)
        made = visit_fill.fill(ENGINE.fetch, db, files, site, START, END, TIMEOUT, plan, table)
    if not made:
        ENGINE.fetch(f"DETACH {db}")
        return None
    return db


def _tables(db: str) -> tuple[list[Any], list[Any]]:
    """The visits (their columns but the keys) and each event with its visit's start, in
    one order: what the two plans must agree on (their keys differ by design)."""
    visits_ = ENGINE.fetch(f"SELECT * EXCLUDE (uk, vn) FROM {db}.visits ORDER BY ALL")
    events = ENGINE.fetch(f"SELECT v.start, e.* EXCLUDE (uk, vn) FROM {db}.vev e "
                          f"JOIN {db}.visits v USING (uk, vn) ORDER BY ALL")  # fmt: skip
    ENGINE.fetch(f"DETACH {db}")
    return [tuple(map(str, r)) for r in visits_], [tuple(map(str, r)) for r in events]


def _users(recs: list[dict[str, Any]]) -> list[str]:
    return sorted({r["user_id"] for r in recs})


@given(recs=sequences(), site=st.sampled_from(["a.example", "b.example"]),
       key=st.sampled_from(KEYS), storage=STORAGE, old=st.booleans())  # fmt: skip
@HYPOTHESIS
def test_fast_fill_makes_the_exact_fills_tables_or_says_it_cannot(
    tmp_path: Path, recs: list[dict[str, Any]], site: str, key: str, storage: str, old: bool
) -> None:
    root = write(tmp_path, recs, storage)
    exact = _fill(root, site, None)
    assert exact is not None
    want = _tables(exact)
    fast = _fill(root, site, key, old=old)
    if fast is not None:
        assert _tables(fast) == want
    if key == visits.FAST_KEY and fast is None:
        # Only a tie says so with the real key (no two generated users share a hash).
        ts = [(r["user_id"], r["timestamp"]) for r in recs]
        assert len(set(ts)) < len(ts)


@given(recs=sequences(), picked=st.integers(0, 3), key=st.sampled_from([None, visits.FAST_KEY]))
@HYPOTHESIS
def test_a_fill_of_some_visitors_makes_their_rows(
    tmp_path: Path, recs: list[dict[str, Any]], picked: int, key: str | None
) -> None:
    """As an update of the cache makes them (visit_cache_delta.merge): the rows of those
    visitors, keyed as the whole range's are."""
    root = write(tmp_path, recs)
    whole = _fill(root, "a.example", key)
    some = _fill(root, "a.example", key, _users(recs)[:picked])
    if some is None:
        assert whole is None  # a tie among some visitors' events is one among all
        return
    if whole is None:
        ENGINE.fetch(f"DETACH {some}")
        return  # a tie among the others': the exact plan fills the range
    for table in ("visits", "vev"):
        mine = ENGINE.fetch(f"SELECT * FROM {whole}.{table} WHERE uk IN "
                            f"(SELECT uk FROM {some}.only) ORDER BY ALL")  # fmt: skip
        assert ENGINE.fetch(f"SELECT * FROM {some}.{table} ORDER BY ALL") == mine
    for db in (whole, some):
        ENGINE.fetch(f"DETACH {db}")


def _scans(node: dict[str, Any]) -> set[str]:
    """What a plan's subtree reads: the tables and the Parquet reads."""
    info = node.get("extra_info") or {}
    if "Table" in info:
        here = {str(info["Table"]).rsplit(".", 1)[-1]}
    elif info.get("Function") == "READ_PARQUET":
        here = {"READ_PARQUET"}
    else:
        here = set()
    for child in node.get("children", []):
        here |= _scans(child)
    return here


def _joins(node: dict[str, Any]) -> list[tuple[set[str], set[str]]]:
    """Each hash join's (probe side's, build side's) reads."""
    found = [j for child in node.get("children", []) for j in _joins(child)]
    if node.get("name") == "HASH_JOIN":
        found.append((_scans(node["children"][0]), _scans(node["children"][1])))
    return found


def test_the_event_tables_join_builds_from_the_narrow_map(tmp_path: Path) -> None:
    """The joins of the archive's events to the visit map hash the map, never the events
    (with their payloads: most of a fill's memory and time when DuckDB chose so)."""
    recs = []
    for i in range(40):
        ts = (BASE + timedelta(seconds=3600 + 600 * i)).isoformat().replace("+00:00", "Z")
        page = {"domain": "a.example", "page_url": "https://a.example/p"}
        recs.append({"event_id": str(uuid.uuid4()), "user_id": f"u{i % 7}", "timestamp": ts,
                     "event_type": "page_view", "received_at": ts, "payload": page})  # fmt: skip
    root = write(tmp_path, recs, "parquet")
    joins: list[tuple[set[str], set[str]]] = []

    def run(sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if sql.startswith("CREATE OR REPLACE TABLE") and ".vmap AS" not in sql:
            select = sql[sql.index(" AS ") + 4 :]
            (_, plan), *_ = ENGINE.fetch(f"EXPLAIN (FORMAT JSON) {select}", params)
            joins.extend(_joins(json.loads(plan)[0]))
        return ENGINE.fetch(sql, params)

    db = f"fill_test_{next(_dbs)}"
    ENGINE.fetch(f"ATTACH ':memory:' AS {db}")
    with hour_files(root, START - timedelta(seconds=TIMEOUT), END) as files:
        assert visit_fill.fill(run, db, files, "a.example", START, END, TIMEOUT, visits.FAST_KEY)
    ENGINE.fetch(f"DETACH {db}")
    # The event table's join and the visits' first events': the map's side is the build.
    mapped = [j for j in joins if {"vmap", "READ_PARQUET"} == j[0] | j[1]]
    assert mapped == [({"READ_PARQUET"}, {"vmap"})] * 2, joins
