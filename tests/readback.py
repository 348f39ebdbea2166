"""The archive and the counters, read back: ids in the hour files, the streams drained,
what the read API says, ``rebuild`` and ``verify`` reproducing it."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import cli, seed_key, z
from tests.inproc import Service
from tests.servers import HTTP, ServiceProcess


def archive_ids(root: Path) -> collections.Counter[str]:
    """How often each event id stands in the archive under ``root``."""
    # Complete lines only: a torn tail is no event (the archiver cuts it off on its next write).
    files = sorted(root.glob("*/*/*/*.jsonl"))
    lines = [ln for f in files for ln in f.read_bytes().split(b"\n")[:-1]]
    return collections.Counter(orjson.loads(ln)["event_id"] for ln in lines)


def wait_archived(url: str, timeout_s: float = 60) -> dict[str, Any]:
    """Poll /persistent/status until nothing is left in the streams; the last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = HTTP.get(f"{url}/persistent/status", timeout=5).json()
        stats = status["stats"]
        if stats["stream_length"] == 0 and stats["pending_messages"] == 0:
            return status
        assert time.monotonic() < deadline, f"archive did not catch up: {status}"
        time.sleep(0.1)


def answers(svc: ServiceProcess, minutes: list[datetime]) -> list[Any]:
    """Everything the read API says about the given minutes (compared before/after rebuild)."""
    # Only the given minutes' rows: the 1440-minute window moves when the minute turns.
    wanted = {m.strftime("%Y-%m-%dT%H:%M:00Z") for m in minutes}
    rows = HTTP.get(f"{svc.url}/analytics/page_views_per_minute?minutes=1440", timeout=10).json()
    out = [[r for r in rows if r["minute_timestamp"] in wanted]]
    for m in minutes:
        out.append(HTTP.get(f"{svc.url}/analytics/minute-buckets/{seed_key(m)}", timeout=10).json())
    return out


def assert_rebuild_reproduces(
    svc: ServiceProcess, flush: Callable[[], None], env: dict[str, str], minutes: list[datetime]
) -> None:
    """``flush`` empties the engine; ``rebuild`` from the archive brings back every answer
    about ``minutes`` as it was, and ``verify`` then finds no difference."""
    before = answers(svc, minutes)
    assert sum(r["count"] for r in before[0]) > 0
    flush()
    assert answers(svc, minutes) != before
    done = cli(["rebuild"], env)
    assert done.returncode == 0, done.stderr
    assert "events/s" in done.stdout
    assert answers(svc, minutes) == before
    checked = cli(["verify"], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 differ" in checked.stdout


def total(svc: Service, event_type: str, since: datetime) -> int:
    """Events of one type counted since ``since`` (minute buckets, exact)."""
    params = {"event_type": event_type, "from": z(since - timedelta(minutes=1)),
              "to": z(datetime.now(UTC) + timedelta(minutes=2))}  # fmt: skip
    reply = svc.http.get(f"{svc.url}/analytics/timeseries", params=params)
    assert reply.status_code == 200, reply.text
    count: int = reply.json()["total"]["count"]
    return count


def archived(data_dir: Path) -> list[dict[str, Any]]:
    """Every record in the service's hourly archive files."""
    records = []
    for path in sorted(data_dir.glob("persistent_events/**/*.jsonl")):
        records += [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return records


def wait_stats_archived(
    svc: Service, site: str, headers: dict[str, str], sent_at: datetime, timeout_s: float
) -> None:
    """Ask the Stats API about ``site`` until its ``archived_until`` passes ``sent_at``
    (the archive holds what was sent before it); bounded by ``timeout_s``."""
    probe = {"site_id": site, "metrics": ["visits"], "date_range": "7d"}
    deadline = time.monotonic() + timeout_s
    while True:
        reply = svc.http.post(f"{svc.url}/api/v2/query", json=probe, headers=headers)
        meta = reply.json()["meta"]
        if datetime.fromisoformat(meta["archived_until"]) > sent_at:
            return
        assert time.monotonic() < deadline, meta
        time.sleep(0.3)
