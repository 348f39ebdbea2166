"""The site page's export, as Plausible's CSV export: the view's Stats API v2 queries (the
top row, the graph, one per panel, and the goals when the site has some), and each answer
as one CSV file of a zip. Pure: the caller runs the queries through the planner
(``stats.run``), so every file is the API's answer to its query.
"""

from __future__ import annotations

import csv
import io
import zipfile
from typing import Any

# Rows per file: a panel's long tail (every page of a big site) is cut here, and the zip's
# README.txt says, per file, how many rows there were in all.
ROW_CAP = 10_000
TOP = ("visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration")
PANELS = (
    ("pages", "event:page"),
    ("entry_pages", "visit:entry_page"),
    ("exit_pages", "visit:exit_page"),
    ("sources", "visit:source"),
    ("referrers", "visit:referrer"),
    ("utm_mediums", "visit:utm_medium"),
    ("utm_sources", "visit:utm_source"),
    ("utm_campaigns", "visit:utm_campaign"),
    ("utm_contents", "visit:utm_content"),
    ("utm_terms", "visit:utm_term"),
    ("countries", "visit:country"),
    ("devices", "visit:device"),
    ("browsers", "visit:browser"),
    ("operating_systems", "visit:os"),
)
GOAL_METRICS = ("visitors", "events", "conversion_rate", "total_revenue")
INTERVALS = ("hour", "day", "week", "month")


def plan(
    site: str, date_range: Any, filters: list[Any], interval: str, goals: bool
) -> list[tuple[str, dict[str, Any]]]:
    """(file name, v2 query body) for each file of the view's export."""
    # Views per visit is not defined under an event filter (the API refuses it there).
    event_filtered = any(
        isinstance(f, list) and len(f) > 1 and str(f[1]).startswith("event:") for f in filters
    )
    top = [m for m in TOP if not (m == "views_per_visit" and event_filtered)]
    base: dict[str, Any] = {"site_id": site, "date_range": date_range, "filters": filters}
    paged = {"pagination": {"limit": ROW_CAP}, "include": {"total_rows": True}}
    out: list[tuple[str, dict[str, Any]]] = [
        ("top.csv", {**base, "metrics": top}),
        ("visitors.csv", {**base, "metrics": top, "dimensions": [f"time:{interval}"], **paged}),
    ]
    for name, dim in PANELS:
        out.append((f"{name}.csv", {**base, "metrics": ["visitors"], "dimensions": [dim], **paged}))
    if goals:
        body = {**base, "metrics": list(GOAL_METRICS), "dimensions": ["event:goal"], **paged}
        out.append(("conversions.csv", body))
    return out


def cell(value: Any) -> Any:
    """A metric or dimension value as a CSV cell: money by its value, nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return value.get("value", "")
    return value


def csv_text(body: dict[str, Any], answer: dict[str, Any]) -> str:
    """One answer as CSV: a header of the dimensions (without their ``visit:``/``event:``/
    ``time:`` prefix) and metrics, then a line per result row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    dims = [d.split(":", 1)[1] if ":" in d else d for d in body.get("dimensions", [])]
    writer.writerow([*dims, *body["metrics"]])
    for row in answer["results"]:
        writer.writerow([cell(v) for v in (*row["dimensions"], *row["metrics"])])
    return buf.getvalue()


def zip_bytes(files: list[tuple[str, dict[str, Any], dict[str, Any]]], site: str) -> bytes:
    """The zip of (name, body, answer): one CSV per answer and a README.txt that says the
    view, where the numbers come from and which files were cut at ROW_CAP rows."""
    buf = io.BytesIO()
    lines = [f"event-analytics export of {site}", ""]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body, answer in files:
            z.writestr(name, csv_text(body, answer))
            total = answer["meta"].get("total_rows", len(answer["results"]))
            cut = f" (cut at {ROW_CAP} of {total})" if total > len(answer["results"]) else ""
            lines.append(f"{name}: {len(answer['results'])} rows{cut}")
        first = files[0][2]
        lines += [
            "",
            f"date_range: {first['query']['date_range'][0]} - {first['query']['date_range'][1]}",
            f"filters: {first['query']['filters']}",
            f"From the archive, exact, counted up to {first['meta']['archived_until']}.",
            "Each file is the answer of POST /api/v2/query to its query (docs/api.md).",
        ]
        z.writestr("README.txt", "\n".join(lines) + "\n")
    return buf.getvalue()
