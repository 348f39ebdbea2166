"""A plain-Python model of the analytics semantics of docs/api.md (funnels, retention,
breakdown queries), to compare DuckDB's answers with. Written from the definitions, not
from the SQL: loops over each user's events, no shortcuts."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from event_analytics.archive import files, record
from event_analytics.timebucket import Interval, floor


def ts_of(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["timestamp"]).astimezone(UTC)


def archive(root: Path, records: list[dict[str, Any]]) -> None:
    """Write records into hour files with the archiver's own file code."""
    by_hour: dict[datetime, list[bytes]] = defaultdict(list)
    for r in records:
        # The archiver's own line: the record codec's encoding of the event.
        line = record.encode(record.decode(orjson.dumps(r)))
        by_hour[floor(ts_of(r), Interval.HOUR)].append(line + b"\n")
    for hour, lines in by_hour.items():
        with files.locked(files.hour_path(root, hour)) as fd:
            files.append(fd, b"".join(lines))


def text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_value(record: dict[str, Any], field: str, bare_is_property: bool) -> str | None:
    if field == "event_type" and not bare_is_property:
        return str(record["event_type"])
    if field == "page_url":
        return text_of(record["payload"].get("page_url"))
    return text_of(record["payload"].get(field.removeprefix("property:")))


def holds(record: dict[str, Any], f: list[Any], bare_is_property: bool) -> bool:
    op = f[0]
    if op == "not":
        return not holds(record, f[1], bare_is_property)
    if op == "or":
        return any(holds(record, g, bare_is_property) for g in f[1])
    value = field_value(record, f[1], bare_is_property)
    wanted = [text_of(v) for v in f[2]]
    if op == "is":
        return value is not None and value in wanted
    if op == "is_not":
        return value is None or value not in wanted
    if value is None:
        return False
    if op == "contains":
        return any(w in value for w in wanted if w is not None)
    return any(re.search(w, value) for w in wanted if w is not None)


def glob_match(pattern: str, value: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, re.DOTALL) is not None


def step_matches(step: dict[str, Any], record: dict[str, Any]) -> bool:
    if record["event_type"] != step["event_type"]:
        return False
    url = step.get("page_url")
    if url is not None:
        page = record["payload"].get("page_url")
        if page is None:
            return False
        if not (glob_match(url, page) if "*" in url else page == url):
            return False
    return all(holds(record, f, True) for f in step.get("where", []))


def _order_key(r: dict[str, Any]) -> tuple[datetime, datetime, str]:
    return ts_of(r), datetime.fromisoformat(r["received_at"]), r["event_id"]


def funnel(records: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    start = datetime.fromisoformat(spec["from"])
    end = datetime.fromisoformat(spec["to"])
    window = timedelta(seconds=spec["window_s"])
    order = spec.get("order", "ordered")
    steps = spec["steps"]
    n = len(steps)
    users: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if start <= ts_of(r) < end + window:
            users[r["user_id"]].append(r)
    best: dict[str, tuple[int, list[datetime], str | None]] = {}
    for user, evs in users.items():
        evs.sort(key=_order_key)
        if order != "strict":
            evs = [e for e in evs if any(step_matches(s, e) for s in steps)]
        chosen: tuple[int, list[datetime], str | None] | None = None
        for i, e1 in enumerate(evs):
            t1 = ts_of(e1)
            if not (step_matches(steps[0], e1) and start <= t1 < end):
                continue
            times = [t1]
            if order == "any":
                level = 1
                for k in range(1, n):
                    if not any(
                        j != i and step_matches(steps[k], e) and t1 <= ts_of(e) <= t1 + window
                        for j, e in enumerate(evs)
                    ):
                        break
                    level += 1
            else:
                pos = i
                for k in range(1, n):
                    if order == "strict":
                        cands = [pos + 1] if pos + 1 < len(evs) else []
                        cands = [j for j in cands if step_matches(steps[k], evs[j])]
                    else:
                        cands = [j for j in range(pos + 1, len(evs))
                                 if step_matches(steps[k], evs[j])][:1]  # fmt: skip
                    if not cands or ts_of(evs[cands[0]]) - t1 > window:
                        break
                    pos = cands[0]
                    times.append(ts_of(evs[pos]))
                level = len(times)
            bd = spec.get("breakdown")
            value = field_value(e1, bd, False) if bd else None
            if chosen is None or level > chosen[0]:
                chosen = (level, times, value)
        if chosen is not None:
            best[user] = chosen
    return _funnel_answer(best, spec)


def _step_list(group: list[tuple[int, list[datetime], str | None]], spec: dict[str, Any]):
    n = len(spec["steps"])
    out = []
    for k in range(1, n + 1):
        reached = [g for g in group if g[0] >= k]
        timed = spec.get("order", "ordered") != "any" and k > 1 and reached
        durations = [(g[1][k - 1] - g[1][k - 2]).total_seconds() for g in reached] if timed else []
        out.append(
            {
                "users": len(reached),
                "median_s_from_previous": statistics.median(durations) if timed else None,
                "average_s_from_previous": statistics.fmean(durations) if timed else None,
            }
        )
    return out


def _funnel_answer(best: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    everyone = list(best.values())
    if not spec.get("breakdown"):
        return {"steps": _step_list(everyone, spec)}
    groups: dict[str, list[Any]] = defaultdict(list)
    for g in everyone:
        groups[g[2] if g[2] is not None else "(none)"].append(g)
    ranked = sorted(groups, key=lambda v: (-len(groups[v]), v))
    merged: dict[str, list[Any]] = defaultdict(list)
    for rank, value in enumerate(ranked):
        merged[value if rank < 20 else "(other)"].extend(groups[value])
    labels = sorted(merged, key=lambda v: (v == "(other)", -len(merged[v]), v))
    return {"breakdowns": [{"value": v, "steps": _step_list(merged[v], spec)} for v in labels]}


# -- retention ----------------------------------------------------------------------------


def period_start(ts: datetime, period: str) -> datetime:
    ts = ts.astimezone(UTC)
    if period == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def add_periods(start: datetime, period: str, k: int) -> datetime:
    if period == "month":
        months = start.year * 12 + start.month - 1 + k
        return start.replace(year=months // 12, month=months % 12 + 1)
    return start + {"hour": timedelta(hours=1), "day": timedelta(days=1),
                    "week": timedelta(weeks=1)}[period] * k  # fmt: skip


def retention(
    records: list[dict[str, Any]], spec: dict[str, Any], archived_until: datetime
) -> dict[str, Any]:
    start = datetime.fromisoformat(spec["from"])
    end = datetime.fromisoformat(spec["to"])
    period, periods = spec["period"], spec["periods"]
    cohort_starts = []
    p = period_start(start, period)
    if p < start:
        p = add_periods(p, period, 1)
    while p < end:
        cohort_starts.append(p)
        p = add_periods(p, period, 1)
    members: dict[datetime, set[str]] = {c: set() for c in cohort_starts}
    cohort_events = [r for r in records if step_matches(spec["cohort_event"], r)]
    if spec.get("type", "first_time") == "first_time":
        first: dict[str, datetime] = {}
        for r in cohort_events:
            u, t = r["user_id"], ts_of(r)
            first[u] = min(first.get(u, t), t)
        for u, t in first.items():
            c = period_start(t, period)
            if c in members:
                members[c].add(u)
    else:
        for r in cohort_events:
            c = period_start(ts_of(r), period)
            if c in members:
                members[c].add(r["user_id"])
    returns: set[tuple[str, datetime]] = {
        (r["user_id"], period_start(ts_of(r), period))
        for r in records
        if step_matches(spec["return_event"], r)
    }
    cohorts = []
    for c in cohort_starts:
        values = [len(members[c])]
        for k in range(1, periods + 1):
            pk = add_periods(c, period, k)
            values.append(sum((u, pk) in returns for u in members[c]))
        complete = [add_periods(c, period, k + 1) <= archived_until for k in range(periods + 1)]
        cohorts.append({"start": c, "users": values[0], "values": values, "complete": complete})
    mean = []
    for k in range(periods + 1):
        done = [c for c in cohorts if c["complete"][k]]
        base = sum(c["users"] for c in done)
        mean.append(sum(c["values"][k] for c in done) / base if base else None)
    return {"cohorts": cohorts, "mean": mean}


# -- breakdown queries --------------------------------------------------------------------


def _dimension(record: dict[str, Any], name: str) -> Any:
    if name.startswith("time:"):
        unit = name.removeprefix("time:")
        t = ts_of(record)
        if unit == "minute":
            return t.replace(second=0, microsecond=0)
        return period_start(t, unit)
    return field_value(record, name, False)


def query(
    records: list[dict[str, Any]], spec: dict[str, Any], start: datetime, end: datetime
) -> dict[str, Any]:
    rows: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    dims = spec.get("dimensions", [])
    for r in records:
        if start <= ts_of(r) < end and all(holds(r, f, False) for f in spec.get("filters", [])):
            rows[tuple(_dimension(r, d) for d in dims)].append(r)
    if not dims and not rows:
        rows[()] = []
    table = []
    for key, evs in rows.items():
        events, visitors = len(evs), len({e["user_id"] for e in evs})
        table.append({"key": key, "events": events, "visitors": visitors,
                      "events_per_visitor": events / visitors if visitors else None})  # fmt: skip
    order = list(spec.get("order_by", []))
    if not order:
        time = [d for d in dims if d.startswith("time:")]
        order = [[time[0], "asc"]] if time else [[spec["metrics"][0], "desc"]]
    named = {name for name, _ in order}
    order += [[d, "asc"] for d in dims if d not in named]
    # Stable sorts, last key first; None last in either direction.
    for name, direction in reversed(order):

        def value(row: dict[str, Any], name: str = name) -> Any:
            return row["key"][dims.index(name)] if name in dims else row[name]

        present = [r for r in table if value(r) is not None]
        missing = [r for r in table if value(r) is None]
        present.sort(key=value, reverse=direction == "desc")
        table = present + missing
    page = spec.get("pagination", {})
    offset, limit = page.get("offset", 0), page.get("limit", 100)
    results = []
    for row in table[offset : offset + limit]:
        metrics = []
        for m in spec["metrics"]:
            if m == "events_per_visitor":
                metrics.append(
                    round(row["events"] / row["visitors"], 2) if row["visitors"] else 0.0
                )
            else:
                metrics.append(row[m])
        results.append({"dimensions": list(row["key"]), "metrics": metrics})
    return {"results": results, "total_rows": len(table)}


def iso_or(value: Any) -> Any:
    """A dimension value as the API writes it (times as ISO with Z)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
    return value
