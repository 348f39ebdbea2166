"""The erasure's pre-pass (archive/holders.py) never skips an hour that holds one of the
users' events, whatever the ids (quotes, backslashes, slashes, non-ASCII, line
separators: the characters JSON escaping treats apart), whatever the payloads (the ids
inside them, a nested ``user_id`` key), for hours with a Parquet copy, a copy with a
tail appended after it, or none; and records streamed in another JSON layout (ASCII
escapes) are archived so that it still finds them. The erasure then removes exactly
their events (a model: the lines of everyone else, unchanged)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.archive import compact, erase, files, holders, record
from event_analytics.model import USER_ID_PATTERN

FIRST = datetime(2026, 3, 1, 10, tzinfo=UTC)
# The characters JSON escaping handles apart, and some that only look like they need it.
TRICKY = "\"\\/u0:,{} 'é\u2028\u00a0😀abAB"
ids = st.text(alphabet=TRICKY, min_size=1, max_size=8).filter(
    lambda s: re.match(USER_ID_PATTERN, s) is not None
)


@st.composite
def archives(draw: st.DrawFn) -> tuple[list[str], list[tuple[int, str, dict[str, object], str]]]:
    users = draw(st.lists(ids, min_size=2, max_size=6, unique=True))
    events = draw(
        st.lists(
            st.tuples(
                st.integers(0, 4),  # hour
                st.sampled_from(users),
                st.sampled_from(users).map(lambda u: {"note": u, "page_url": f"/{u}"})
                | st.sampled_from(users).map(lambda u: {"nested": {"user_id": u}})
                | st.just({}),
                st.sampled_from(["canonical", "ascii"]),  # how the record was streamed
            ),
            min_size=1,
            max_size=40,
        )
    )
    return users, events


def _line(n: int, hour: int, user: str, payload: dict[str, object], layout: str) -> bytes:
    fields = {
        "event_id": str(uuid.UUID(int=n + 1)),
        "user_id": user,
        "timestamp": (FIRST + timedelta(hours=hour, seconds=n)).isoformat().replace("+00:00", "Z"),
        "event_type": "view",
        "payload": payload,
        "received_at": (FIRST + timedelta(hours=hour)).isoformat().replace("+00:00", "Z"),
    }
    if layout == "ascii":  # another producer's JSON: \u escapes for every non-ASCII
        raw = json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()
    else:
        raw = orjson.dumps(fields)
    return record.archive_line(raw)[1] + b"\n"  # what the archiver writes for it


@pytest.mark.parametrize(("chunk", "many"), [(8 << 20, 16), (40, 1)])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=archives(), data=st.data())
def test_the_pre_pass_never_skips_an_hour_holding_the_users(
    tmp_path_factory: pytest.TempPathFactory,
    chunk: int,
    many: int,
    drawn: tuple[list[str], list[tuple[int, str, dict[str, object], str]]],
    data: st.DataObject,
) -> None:
    users, events = drawn
    root = tmp_path_factory.mktemp("archive")
    lines = [_line(n, *e) for n, e in enumerate(events)]
    by_hour: dict[int, list[bytes]] = {}
    for (hour, *_), line in zip(events, lines, strict=True):
        by_hour.setdefault(hour, []).append(line)
    # Some hours get a Parquet copy, some of those a tail appended after it.
    copied = data.draw(st.sets(st.sampled_from(sorted(by_hour))))
    tailed = data.draw(st.sets(st.sampled_from(sorted(copied)))) if copied else set()
    for hour, got in by_hour.items():
        path = files.hour_path(root, FIRST + timedelta(hours=hour))
        head, tail = (got[:-1], got[-1:]) if hour in tailed and len(got) > 1 else (got, [])
        with files.locked(path) as fd:
            files.append(fd, b"".join(head))
        if hour in copied:
            assert compact.compact(path) is not None
        if tail:
            with files.locked(path) as fd:
                files.append(fd, b"".join(tail))
    targets = data.draw(st.sets(st.sampled_from(users), min_size=1))

    saved = holders._CHUNK, holders._MANY
    holders._CHUNK, holders._MANY = chunk, many
    try:
        found = files.list_files(root)
        maybe = {f.hour for f in holders.hours_holding(found, targets)}
        holding = {FIRST + timedelta(hours=h) for h, u, *_ in events if u in targets}
        assert holding <= maybe
        report = erase.erase(root, targets, crash=lambda _p: None)
    finally:
        holders._CHUNK, holders._MANY = saved
    assert report.files_scanned == len(found) and report.files_read == len(maybe)
    assert report.removed == sum(1 for _, u, *_ in events if u in targets)
    kept = [ln for (_, u, *_), ln in zip(events, lines, strict=True) if u not in targets]
    after = [ln for f in files.list_files(root) for ln in f.path.read_bytes().splitlines(True)]
    assert sorted(after) == sorted(kept)
    for f in files.list_files(root):  # no copy a query reads holds them
        if compact.parquet_path(f.path).exists():
            assert compact.covered(f.path) is not None


def test_a_line_streamed_with_escapes_is_archived_with_the_codecs_field() -> None:
    fields = {"event_id": str(uuid.uuid4()), "user_id": 'zoé"\\',
              "timestamp": "2026-03-01T10:00:00Z", "event_type": "view", "payload": {}}  # fmt: skip
    raw = json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()
    assert raw.startswith(record.ID_PREFIX) and record.user_field('zoé"\\') not in raw
    got, line = record.archive_line(raw)
    assert got.user_id == 'zoé"\\' and record.user_field(got.user_id) in line
    assert record.decode(line) == got
    canonical = record.encode(got)
    assert record.archive_line(canonical) == (got, canonical)  # the service's own: as is


def test_a_copy_duckdb_cannot_read_leaves_the_hour_to_its_jsonl(tmp_path: Path) -> None:
    path = files.hour_path(tmp_path, FIRST)
    with files.locked(path) as fd:
        files.append(fd, _line(0, 0, "ann", {}, "canonical") + _line(1, 0, "bo", {}, "canonical"))
    assert compact.compact(path) is not None
    parquet = compact.parquet_path(path)
    parquet.write_bytes(b"PAR1 not a parquet file PAR1")
    found = files.list_files(tmp_path)
    assert compact.covered(path) is not None  # the record still matches the JSONL
    assert [f.path for f in holders.hours_holding(found, ["ann"])] == [path]
    assert holders.hours_holding(found, ["nobody"]) == []
