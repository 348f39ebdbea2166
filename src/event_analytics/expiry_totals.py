"""What the retention job (expiry.py) has done, kept in ``DATA_DIR/expiry.json``, and the
first day it keeps: what /metrics, /persistent/status, ``import`` and ``verify`` read.

Apart from expiry.py, which talks to PostgreSQL: these readers never load its client.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import orjson

from event_analytics.config import Settings
from event_analytics.timebucket import Interval, floor

T = TypeVar("T")


def horizon(now: datetime, days: int) -> datetime:
    """The first UTC day kept: hours before it are deleted."""
    return floor(now - timedelta(days=days), Interval.DAY)


def status_path(settings: Settings) -> Path:
    return settings.data_dir / "expiry.json"


@dataclass
class Totals:
    """What every pass so far deleted (kept across restarts: the metrics are counters)."""

    passes: int = 0
    hours_deleted: int = 0
    events_deleted: int = 0
    postgres_rows_deleted: int = 0
    last_pass: str | None = None
    horizon: str | None = None  # the first day kept by the last pass (None: it failed)
    oldest_hour: str | None = None  # the oldest hour left in the archive after it
    held_back: str | None = None  # why the last pass kept a day past the limit
    last_error: str | None = None
    deleted_days: list[str] = field(default_factory=list)  # by the last pass
    # The day a pass is deleting: set before its counters go, cleared once its files are
    # gone. A pass killed in between leaves it set, and `verify` leaves that day out.
    expiring: str | None = None


def read_totals(settings: Settings) -> Totals | None:
    """The job's totals, or None if it never ran (or its file is unreadable)."""
    try:
        found = orjson.loads(status_path(settings).read_bytes())
        return Totals(**{k: v for k, v in found.items() if k in Totals.__dataclass_fields__})
    except (OSError, orjson.JSONDecodeError, TypeError):
        return None


def write_totals(settings: Settings, totals: Totals) -> None:
    path = status_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    with scratch.open("wb") as out:
        out.write(orjson.dumps(asdict(totals)))
        out.flush()
        os.fsync(out.fileno())
    os.replace(scratch, path)


def set_aside(
    settings: Settings, differences: list[T], hour: Callable[[T], datetime]
) -> tuple[list[T], str | None]:
    """``verify``'s differences without those of the day a pass is deleting (its counters
    or rows may be gone while some of its files are still there), and a note saying so."""
    totals = read_totals(settings)
    day = totals.expiring if totals else None
    kept = [d for d in differences if f"{hour(d):%Y-%m-%d}" != day]
    if day is None or len(kept) == len(differences):
        return differences, None
    return kept, (
        f"note: {len(differences) - len(kept)} differences in {day} not counted: the "
        "retention job is deleting that day (its next pass finishes it)"
    )
