"""Archive file primitives on a real filesystem: torn-line repair, appends, id scans, counts."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from event_analytics.archive import files


def line(event_id: str | None = None) -> bytes:
    record = {"event_id": event_id or str(uuid.uuid4()), "user_id": "u", "timestamp": "x"}
    return orjson.dumps(record) + b"\n"


def test_paths_round_trip(tmp_path: Path) -> None:
    hour = datetime(2026, 11, 27, 22, tzinfo=UTC)
    path = files.hour_path(tmp_path, hour)
    assert path.relative_to(tmp_path).as_posix() == "2026/11/27/events_2026-11-27-22.jsonl"
    assert files.hour_of(path) == hour
    assert files.hour_of(tmp_path / "notes.txt") is None


@pytest.mark.parametrize("tail", [b"", b'{"event_id":"12', b"x" * 70_000])
def test_torn_tail_is_cut_on_open(tmp_path: Path, tail: bytes) -> None:
    path = files.hour_path(tmp_path, datetime(2026, 1, 1, tzinfo=UTC))
    whole = line() + line()
    path.parent.mkdir(parents=True)
    path.write_bytes(whole + tail)
    with files.locked(path) as fd:
        files.append(fd, line())
    data = path.read_bytes()
    assert data.startswith(whole) and data.count(b"\n") == 3 and data.endswith(b"\n")
    assert len(data) == len(whole) + len(line())


def test_a_file_of_only_a_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "2026/01/01/events_2026-01-01-00.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"event_id":"abc')
    with files.locked(path) as fd:
        assert os.fstat(fd).st_size == 0


def test_present_ids_finds_exactly_the_ones_written(tmp_path: Path) -> None:
    ids = [str(uuid.uuid4()) for _ in range(5)]
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"".join(line(i) for i in ids[:3]))
    assert files.present_ids(path, set(ids)) == set(ids[:3])
    assert files.present_ids(tmp_path / "missing.jsonl", set(ids)) == set()


def test_line_counter_reads_only_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(line() + line())
    counter = files.LineCounter()
    assert counter.count(path, path.stat().st_size) == 2
    # Replace the counted bytes with garbage of the same length: a counter that re-read
    # the file would now see no newline there; ours trusts what it already counted.
    size = path.stat().st_size
    path.write_bytes(b"x" * size + line() + b'{"event_id":"torn')
    assert counter.count(path, path.stat().st_size) == 3  # the torn tail is not an event
    with path.open("ab") as handle:
        handle.write(b'"}\n')
    assert counter.count(path, path.stat().st_size) == 4
    # Cut back (torn-line repair): counted again from the start.
    path.write_bytes(line())
    assert counter.count(path, path.stat().st_size) == 1
