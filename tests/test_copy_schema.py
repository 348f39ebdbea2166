"""The columns derived at compaction (archive/derived.py) against the same columns derived
at read time: a copy of the current schema, a copy written before the derived columns
(schema 1: the record's columns only, its record without ``schema``) and the JSONL, with
or without a tail of late lines, hold the same events with the same columns and give the
same Stats API answers."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from hypothesis import given
from hypothesis import strategies as st

from event_analytics.analytics import stats
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.sql import Params, source
from event_analytics.analytics.stats_spec import parse_query, with_goals
from event_analytics.archive import derived
from event_analytics.archive.compact import compact_closed, covered
from tests import analytics_model as model
from tests.test_analytics_model import ENGINE, HYPOTHESIS
from tests.test_visits_model import BASE, SITE_GOALS, TIMEOUT, sequences
from tests.test_visits_plans import _bodies

# A version-1 copy as compaction wrote it before ``derived``: these columns, this order.
V1_COLUMNS = 'event_id, user_id, "timestamp", event_type, payload, received_at, page_url'
FAR = datetime(9000, 1, 1, tzinfo=UTC)


def _to_schema_1(root: Path) -> None:
    """Every copy under ``root`` as a version-1 copy: its derived columns dropped, its
    record without ``schema``. ``root`` is a copy of a compacted tree: each record is
    also pointed at its hour file's inode here, as compaction would have recorded it."""
    connection = duckdb.connect()
    try:
        for copy in root.rglob("*.parquet"):
            scratch = copy.with_suffix(".v1.tmp")
            connection.execute(
                f"COPY (SELECT {V1_COLUMNS} FROM read_parquet($p)) TO "
                + "'"
                + str(scratch).replace("'", "''")
                + "' (FORMAT parquet)",
                {"p": str(copy)},
            )
            os.replace(scratch, copy)
            record_path = copy.with_suffix(".parquet.json")
            record = json.loads(record_path.read_text())
            assert record.pop("schema") == derived.SCHEMA_VERSION
            record["inode"] = copy.with_suffix(".jsonl").stat().st_ino
            record_path.write_text(json.dumps(record))
    finally:
        connection.close()


def _archives(tmp_path: Path, recs: list[dict[str, Any]], tail: bool) -> tuple[Path, Path, Path]:
    """Three archives of ``recs``: JSONL only; current copies; version-1 copies (a copy
    of the current tree, converted: compaction is the same either way, so it runs once).
    With ``tail`` the second half of the records is appended to the last two after
    compaction."""
    tag = os.urandom(4).hex()
    jsonl, new, old = (tmp_path / f"{how}-{tag}" for how in ("jsonl", "new", "old"))
    model.archive(jsonl, recs)
    half = len(recs) // 2 if tail else len(recs)
    model.archive(new, recs[:half])
    compact_closed(new, FAR)
    if new.exists():  # no records, no tree
        shutil.copytree(new, old)
        _to_schema_1(old)
    for root in (new, old):
        model.archive(root, recs[half:])
    return jsonl, new, old


def _rows(root: Path) -> list[tuple[Any, ...]]:
    """Every event as ``source`` presents it, derived columns included, by event id."""
    p = Params()
    with hour_files(root, None, FAR) as files:
        return sorted(ENGINE.fetch(f"SELECT * FROM ({source(p, files)})", p.values))


# Custom properties (the payload), pages and goals as filters.
PROPS = {"site_id": "a.example", "metrics": ["visitors", "events"],
         "dimensions": ["event:props:plan"],
         "date_range": _bodies("a.example")[0]["date_range"],
         "filters": [["contains", "event:page", ["/"]],
                     ["is", "event:goal", ["Purchase"]]]}  # fmt: skip


@given(recs=sequences(), which=st.integers(0, 5), tail=st.booleans())
@HYPOTHESIS
def test_old_copies_and_tails_answer_as_new_copies(
    tmp_path: Path, recs: list[dict[str, Any]], which: int, tail: bool
) -> None:
    jsonl, new, old = _archives(tmp_path, recs, tail)
    assert {covered(j).schema for j in new.rglob("*.jsonl") if covered(j)} <= {2}
    assert {covered(j).schema for j in old.rglob("*.jsonl") if covered(j)} <= {1}
    # The version-1 copies are in use wherever the current ones are.
    in_use = [[covered(j) is not None for j in sorted(r.rglob("*.jsonl"))] for r in (new, old)]
    assert in_use[0] == in_use[1]
    # The events with their columns, whichever file they come from...
    want = _rows(jsonl)
    assert _rows(new) == want
    assert _rows(old) == want
    # ...and every dashboard query's answer.
    body = [*_bodies("a.example"), PROPS][which]
    q = with_goals(parse_query(body, BASE), SITE_GOALS)
    answer = stats.run(ENGINE, q, jsonl, BASE, TIMEOUT)
    assert stats.run(ENGINE, q, new, BASE, TIMEOUT) == answer
    assert stats.run(ENGINE, q, old, BASE, TIMEOUT) == answer
