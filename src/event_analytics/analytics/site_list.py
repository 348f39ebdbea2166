"""The sites seen in the archive over a range, with their visitors and events: what the
dashboard's site picker offers (``GET /api/sites``).

A site is decided per event by the one rule of ``sites.py``; bot events are in no site's
numbers (as in the Stats API's). Exact, from the hour files, like every archive answer.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from event_analytics.analytics.pool import QueryEngine
from event_analytics.analytics.snapshot import hour_files
from event_analytics.analytics.sql import Params, source
from event_analytics.timebucket import iso_z

MAX_SITES = 1000


def build(files: Any, start: datetime, end: datetime) -> tuple[str, dict[str, Any]]:
    p = Params()
    sql = f"""WITH events AS ({source(p, files)}),
ev AS (SELECT site, user_id FROM events
    WHERE ts >= {p.bind(start)} AND ts < {p.bind(end)} AND NOT starts_with(event_type, 'bot_'))
SELECT site, count(DISTINCT user_id) AS visitors, count(*) AS events FROM ev
WHERE site IS NOT NULL GROUP BY site ORDER BY events DESC, site LIMIT {p.bind(MAX_SITES)}"""
    return sql, p.values


def run(
    engine: QueryEngine, root: Path, start: datetime, end: datetime, archived_until: datetime
) -> dict[str, Any]:
    """``{"sites": [{site_id, visitors, events}], "meta": {...}}``, most events first."""
    with hour_files(root, start, end) as files:
        rows = engine.fetch(*build(files, start, end))
    return {
        "sites": [{"site_id": s, "visitors": int(v), "events": int(e)} for s, v, e in rows],
        "meta": {
            "date_range": [iso_z(start), iso_z(end)],
            "archived_until": iso_z(archived_until),
            "method": "exact",
            "limit": MAX_SITES,
        },
    }
