"""The site page's speed: every query one load of ``/dashboard/<site>`` sends for a 7-day
range (static/site*.js), timed as a set over the analytics bench's archive (issue 25:
the whole set in <= 2 s over the 3,000,000-event archive).

    python benchmarks/site_page_bench.py [--events 3000000] [--days 7] [--runs 5]
        [--storage parquet|jsonl] [--dir /tmp/ea-analytics-bench]
        [--visit-cache ab|on|off] [--visit-cache-bytes N] [--churn N] [--next-day]

The archive is analytics_bench.py's (generated once under --dir with its parameters and
reused, the same directory as that bench by default). The set, in the order the page
sends it, each through the code the service runs (``stats.run``, ``site_list.run``):
the site picker (``GET /api/sites``, 12 months), the top row with the previous period
(``include.comparisons``), the graph per day with its comparison, the current visitors
(``GET /api/sites`` over the last 5 minutes), the four panels' first tabs (top 9 with
``total_rows``), and with goals: conversions and revenue with comparison, the Goals
panel, and the Goal properties panel (``event:props:plan`` of a goal); not the goals
list (``GET /api/v1/sites/goals``, Redis, not the archive). Timed one after another in
one process: the page keeps two in flight against a pool of two query processes on these
two cores, so the set's sum is what its wall time comes to.

Each page load (one to warm, then --runs) sends the set in turn, timing each request;
its whole time is the sum. Every answer, of every load, is checked against
site_page_model.py's answers computed from the records the generator sent (computed once
per archive and kept beside it); a wrong answer stops the bench (exit 1) before any
figure is written. Bounded: each query by --query-timeout, the loads by --budget (past
either the bench stops, exit 1). Each request's time is printed as it comes.

Each load runs twice in turn (``--visit-cache on``, the default): with the visit cache
(analytics/visit_cache.py) emptied first (cold: the first load after the archive
changed, whose first query fills the range's entries), and again (warm: a repeat load
over an unchanged archive); ``--visit-cache ab`` runs it without the cache first (the
A/B in one run), ``off`` only without; ``--visit-cache-bytes`` is its bound.

``--churn N`` adds two modes over a live copy of the archive (``--dir``/churn: hard
links, but the last hour, the one being written, a JSONL file of its own and not
compacted, as on a live site): before each load a writer appends N events (visits of
the bench's visitors, some of them seen before) to that hour, and the load runs with
the cache's incremental update off (each change fills the range again, as before
visit_cache_delta) and then on (the entries brought up by the appended lines). Their
answers cannot be the model's (events were added): each churning load's answers are
checked against a run without the cache over the same files, after its clock stops.

``--next-day`` adds the owner's first load of a day after the cache's refresh
(analytics/visit_refresh.py): before each load, the cache emptied, the page of the day
before read at 23:30 (its "7d" and comparison), the refresh's tick at 00:10 (timed apart,
not in the load: it runs between loads), then the load, its answers checked against the
model. The archive's last day is whole when the refresh reads it: on a live site the
hourly refreshes after it keep the entries up to the files (the churning modes measure
what a load merges between two).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import site_page_model
from analytics_bench import END, GOALS, SITE, _visit, archive, archive_args, hour_records
from rich.console import Console
from rich.table import Table

from event_analytics.analytics import site_list, stats
from event_analytics.analytics.pool import QueryEngine, QueryTimeout
from event_analytics.analytics.stats_spec import parse_query, with_goals
from event_analytics.analytics.visit_refresh import Refresher
from event_analytics.archive import files, record
from event_analytics.archive.compact import compact_closed
from event_analytics.config import Settings

TARGET_S = 2.0
TOP = ["visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration"]
PANELS = ["event:page", "visit:source", "visit:country", "visit:device"]


def page_queries(today: date) -> dict[str, dict[str, Any]]:
    """The Stats API bodies of one page load for "7d" (the 7 days ending today), as
    site.js, site-goals.js and site-goal-props.js build them."""
    rng = [(today - timedelta(days=6)).isoformat(), today.isoformat()]
    compare = {"comparisons": {"mode": "previous_period"}}
    goal_names = [g.display_name for g in GOALS]
    out: dict[str, dict[str, Any]] = {
        "top row, previous period": {
            "site_id": SITE, "metrics": TOP, "filters": [], "date_range": rng,
            "include": compare,
        },
        "graph per day, previous period": {
            "site_id": SITE, "metrics": ["visitors"], "dimensions": ["time:day"], "filters": [],
            "date_range": rng, "include": {"time_labels": True, **compare},
        },
    }  # fmt: skip
    for dim in PANELS:
        out[f"panel {dim}"] = {
            "site_id": SITE, "metrics": ["visitors"], "dimensions": [dim], "filters": [],
            "date_range": rng, "pagination": {"limit": 9}, "include": {"total_rows": True},
        }  # fmt: skip
    out["goals: conversions, revenue, previous period"] = {
        "site_id": SITE, "metrics": ["events", "total_revenue"],
        "filters": [["is", "event:goal", goal_names]], "date_range": rng, "include": compare,
    }  # fmt: skip
    out["goals panel"] = {
        "site_id": SITE, "dimensions": ["event:goal"], "filters": [],
        "metrics": ["visitors", "events", "conversion_rate", "total_revenue"],
        "date_range": rng, "pagination": {"limit": 100},
    }  # fmt: skip
    out["goal properties: event:props:plan of Purchase"] = {
        "site_id": SITE, "dimensions": ["event:props:plan"],
        "filters": [["is", "event:goal", ["Purchase"]]],
        "metrics": ["visitors", "events", "total_revenue"],
        "date_range": rng, "pagination": {"limit": 100},
    }  # fmt: skip
    return out


def page_set(root: Path, end: datetime, engine: QueryEngine) -> dict[str, Callable[[], Any]]:
    """Each request of one page load as a call; ``end`` is "now" (the archive's end)."""
    timeout_s = Settings.model_fields["session_timeout_s"].default
    today = (end - timedelta(microseconds=1)).date()  # the last archived day is "today"
    out: dict[str, Callable[[], Any]] = {}
    year_ago = end - timedelta(days=366)
    out["site picker: /api/sites 12mo"] = lambda: site_list.run(engine, root, year_ago, end, end)
    for name, body in page_queries(today).items():
        q = with_goals(parse_query(body, end), GOALS)
        out[name] = lambda q=q: stats.run(engine, q, root, end, timeout_s)
    five = end - timedelta(minutes=5)
    out["current visitors: /api/sites 5 min"] = lambda: site_list.run(engine, root, five, end, end)
    return out


class Wrong(Exception):
    """An answer differs from the model's."""


class OverBudget(Exception):
    """The timed runs passed --budget."""


def check(name: str, answer: dict[str, Any], expected: dict[str, Any]) -> None:
    got = site_page_model.seen(answer, expected)
    if got != expected:
        raise Wrong(f"{name}: answered {json.dumps(got)}\nthe model: {json.dumps(expected)}")


def quantiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_s": statistics.median(samples),
            "p95_s": samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]}  # fmt: skip


Calls = dict[str, Callable[[], Any]]
# A mode: its calls, what to do before each load, and calls whose answers its answers must
# equal (None: the model's).
Mode = tuple[Calls, Callable[[], None] | None, Calls | None]
# Each page load, three ways in turn (--visit-cache ab): without the visit cache; with it
# emptied first (the first load after the archive changed: on a live site, most loads);
# and again (a repeat load over an unchanged archive).
MODES = ("no cache", "cache, cold", "cache, warm")


def page_loads(
    modes: dict[str, Mode],
    model: dict[str, Any],
    runs: int,
    deadline: float,
    say: Callable[[str], None],
) -> dict[str, tuple[dict[str, dict[str, float]], dict[str, float]]]:
    """``runs`` page loads after one to warm (page cache, DuckDB's readers), each the
    requests in turn once per mode (its calls, and what to do before the load), each
    request timed and its answer checked after its clock stops: per mode, each request's
    p50/p95, and the whole load's (the sum of its requests' times)."""
    each = {m: {name: [] for name in calls} for m, (calls, _, _) in modes.items()}
    whole: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(runs + 1):
        for mode, (calls, before, reference) in modes.items():
            if before is not None:
                before()
            total = 0.0
            answers = {}
            for name, call in calls.items():
                if time.monotonic() > deadline:
                    raise OverBudget(f"past --budget in page load {i} (0 is the warm-up), "
                                     f"{mode}, at {name}")  # fmt: skip
                began = time.perf_counter()
                try:
                    answer = call()
                except QueryTimeout as e:
                    raise OverBudget(f"page load {i} (0 is the warm-up), {name}: {e}") from None
                took = time.perf_counter() - began
                if reference is None:
                    check(name, answer, model[name])
                answers[name] = answer
                say(f"load {i}{' (warm)' if i == 0 else ''}, {mode}: {name}: {took:.3f} s"
                    f"{', as the model' if reference is None else ''}")  # fmt: skip
                total += took
                if i:
                    each[mode][name].append(took)
            say(f"load {i}, {mode}: the whole page {total:.3f} s "
                f"(load average {os.getloadavg()[0]:.2f})")  # fmt: skip
            for name, call in (reference or {}).items():
                if answers[name] != (want := call()):
                    raise Wrong(f"{mode}: {name}: answered {json.dumps(answers[name])}\n"
                                f"without the cache: {json.dumps(want)}")  # fmt: skip
            if reference is not None:
                say(f"load {i}, {mode}: every answer as without the cache")
            if i:
                whole[mode].append(total)
    return {m: ({n: quantiles(t) for n, t in each[m].items()}, quantiles(whole[m])) for m in modes}


CHURN_MODES = {"churning, incremental off": False, "churning, incremental": True}
NEXT_DAY = "cache, next day after the refresh"


def next_day(engine: QueryEngine, root: Path, end: datetime, say: Callable[[str], None]
             ) -> Callable[[], None]:  # fmt: skip
    """Before a load of the page as of ``end``'s day: the cache emptied, the day before's
    page read at 23:30, the refresh's tick at 00:10 (its time said, not counted)."""
    yesterday = page_set(root, end - timedelta(days=1), engine)
    midnight = end - timedelta(days=1)
    clock = [midnight]
    engine.visit_cache.clock = lambda: clock[0]

    def before() -> None:
        engine.visit_cache.clear()
        clock[0] = midnight - timedelta(minutes=30)
        for call in yesterday.values():
            call()
        clock[0] = midnight + timedelta(minutes=10)
        began = time.perf_counter()
        cpu = time.process_time()
        n = Refresher(engine.visit_cache, lambda: True).tick(clock[0])
        say(f"the refresh after midnight: {n} entries, {time.perf_counter() - began:.3f} s, "
            f"{time.process_time() - cpu:.2f} CPU-s (between loads, not in the next)")  # fmt: skip

    return before


def churn_copy(root: Path, where: Path, end: datetime) -> Path:
    """A copy of the archive to append to: hard links, but the hour before ``end`` a file
    of its own without its Parquet copy (a live site's current hour is not compacted)."""
    shutil.rmtree(where, ignore_errors=True)
    live = where / "archive"
    last = files.hour_path(root, end - timedelta(hours=1))
    for path in root.rglob("*"):
        if path.is_dir() or (path.parent == last.parent and path.name.startswith(last.stem + ".")):
            continue
        target = live / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    target = live / last.relative_to(root)
    shutil.copyfile(last, target)
    return live


class Writer:
    """Appends visits of the bench's visitors to the last hour, as the archiver does."""

    def __init__(self, root: Path, end: datetime, events: int, users: int, pages: int):
        self.root, self.end, self.events, self.users = root, end, events, users
        self.urls = [f"https://{SITE}/p/{i}" for i in range(pages)]
        self.rng = random.Random(7)

    def append(self) -> None:
        hour = self.end - timedelta(hours=1)
        out: list[record.Record] = []
        while len(out) < self.events:
            user = f"user_{self.rng.randrange(self.users)}"
            began = hour + timedelta(microseconds=self.rng.randrange(3_600_000_000))
            for ts, kind, payload in _visit(self.rng, began, self.end, self.urls, len(self.urls)):
                out.append(record.Record(event_id=uuid.uuid4(), user_id=user, timestamp=ts,
                                         event_type=kind, payload=payload,
                                         received_at=ts))  # fmt: skip
        lines = b"".join(record.encode(r) + b"\n" for r in out[: self.events])
        with files.locked(files.hour_path(self.root, hour)) as fd:
            files.append(fd, lines)


def expected(args: argparse.Namespace, params: dict[str, Any], end: datetime) -> dict[str, Any]:
    """The model's answers for this archive, kept in --dir beside it (computing them reads
    every generated record again)."""
    kept = args.dir / "site_page_model.json"
    if kept.exists() and (got := json.loads(kept.read_text()))["params"] == params:
        return dict(got["answers"])
    began = time.perf_counter()
    timeout_s = Settings.model_fields["session_timeout_s"].default
    hours = hour_records(args.events, args.days, args.users, args.pages, end)
    answers = site_page_model.build(hours, end, args.days, GOALS, timeout_s)
    answers = json.loads(json.dumps(answers))  # as kept: lists, not tuples
    kept.write_text(json.dumps({"params": params, "answers": answers}))
    Console().print(f"modelled what was sent in {time.perf_counter() - began:.0f} s")
    return answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    archive_args(parser, runs=5)
    parser.add_argument("--budget", type=float, default=1200, help="seconds for the timed runs")
    parser.add_argument("--query-timeout", type=float, default=120, help="seconds per query")
    parser.add_argument(
        "--storage",
        choices=["parquet", "jsonl"],
        default="parquet",
        help="closed hours compacted to Parquet (as the archiver leaves them), or JSONL only",
    )
    parser.add_argument(
        "--visit-cache",
        choices=["ab", "on", "off"],
        default="on",
        help="on: each load with the visit cache emptied (cold), then again (warm), as the "
        "service runs; ab: without it first (slow: the whole page per load without the "
        "cache, mind --budget); off: without only",
    )
    parser.add_argument(
        "--visit-cache-bytes",
        type=int,
        default=Settings.model_fields["visit_cache_bytes"].default,
        help="the visit cache's bound (EA_VISIT_CACHE_BYTES)",
    )
    parser.add_argument(
        "--churn",
        type=int,
        default=0,
        help="N > 0: also two churning modes, N events appended to the hour being written "
        "before each load (the cache's incremental update off, then on)",
    )
    parser.add_argument(
        "--next-day",
        action="store_true",
        help="also the first load of a day after the cache's refresh (the day before's "
        "page read, the refresh's tick after midnight, then the load)",
    )
    args = parser.parse_args()
    if args.days != 7:
        parser.error("--days: the page's 7-day range must hold the whole archive: 7")
    end = END  # analytics_bench's: the same archive
    console = Console()
    root, params = archive(args, console)
    model = expected(args, params, end)
    parquet = list(root.rglob("*.parquet*"))
    if args.storage == "jsonl":
        for copy in parquet:
            copy.unlink()
    elif not parquet:
        began = time.perf_counter()
        hours, _ = compact_closed(root, end + timedelta(hours=1))
        console.print(f"compacted {hours} hours in {time.perf_counter() - began:.0f} s")
    size = sum(f.size_bytes for f in files.list_files(root))

    def engine(cache_bytes: int) -> QueryEngine:
        return QueryEngine(max_concurrent=1, timeout_s=args.query_timeout, memory_limit="2GB",
                           threads=args.threads, visit_cache_bytes=cache_bytes)  # fmt: skip

    plain, cached = engine(0), engine(args.visit_cache_bytes)
    every: dict[str, Mode] = {
        MODES[0]: (page_set(root, end, plain), None, None),
        MODES[1]: (page_set(root, end, cached), cached.visit_cache.clear, None),
        MODES[2]: (page_set(root, end, cached), None, None),
    }
    wanted = {"ab": MODES, "off": MODES[:1], "on": MODES[1:]}[args.visit_cache]
    modes = {m: every[m] for m in wanted}
    churners: list[QueryEngine] = []
    if args.churn:
        live = churn_copy(root, args.dir / "churn", end)
        writer = Writer(live, end, args.churn, args.users, args.pages)
        reference = page_set(live, end, plain)
        for mode, incremental in CHURN_MODES.items():
            churner = engine(args.visit_cache_bytes)
            churner.visit_cache.incremental = incremental
            churners.append(churner)
            modes[mode] = (page_set(live, end, churner), writer.append, reference)
        wanted = (*wanted, *CHURN_MODES)
    if args.next_day:
        refreshed = engine(args.visit_cache_bytes)
        before = next_day(refreshed, root, end, console.print)
        modes[NEXT_DAY] = (page_set(root, end, refreshed), before, None)
        wanted = (*wanted, NEXT_DAY)
    deadline = time.monotonic() + args.budget
    load_before = os.getloadavg()
    try:
        measured = page_loads(modes, model, args.runs, deadline, console.print)
    except (Wrong, OverBudget) as e:
        console.print(f"[red]{e}[/red]")
        return 1
    load_after = os.getloadavg()
    for mode, churner in zip(CHURN_MODES, churners, strict=False):
        c = churner.visit_cache
        console.print(f"{mode}: fills {c.misses}, updates {c.updates} (visitors cut again: "
                      f"{c.updated_visitors}), hits {c.hits}, bypasses {c.bypasses}; "
                      f"entries {c.size() / 2**20:.0f} MiB")  # fmt: skip
    table = Table(
        title=(
            f"The site page's queries, 7-day range, over {args.events:,} archived events "
            f"({size / 1e6:,.0f} MB JSONL, {args.days} days, {args.storage}), {args.runs} runs, "
            f"DuckDB threads {args.threads}, visit cache {args.visit_cache_bytes / 2**20:,.0f} "
            f"MiB; every answer equal to the model's; load average {load_before[0]:.2f} "
            f"before, {load_after[0]:.2f} after"
        )
    )
    table.add_column("request", justify="left")
    for mode in modes:
        table.add_column(f"{mode}: p50 s", justify="right")
        table.add_column("p95 s", justify="right")
    calls = modes[wanted[0]][0]
    if args.churn:
        title = f", churning: {args.churn} events appended to the last hour before each load"
        table.title = f"{table.title}{title}"
    for name in calls:
        table.add_row(name, *(f"{measured[m][0][name][k]:.3f}" for m in modes
                              for k in ("p50_s", "p95_s")))  # fmt: skip
    table.add_row(
        f"the whole page ({len(calls)} requests, in turn; target p50 <= {TARGET_S:g} s)",
        *(f"{measured[m][1][k]:.3f}" for m in modes for k in ("p50_s", "p95_s")),
    )
    console.print(table)
    for mode in modes:
        p50 = measured[mode][1]["p50_s"]
        ratio = measured[wanted[0]][1]["p50_s"] / p50 if p50 else float("inf")
        verdict = "met" if p50 <= TARGET_S else "missed"
        console.print(f"{mode}: the whole page p50 {p50:.3f} s, {verdict}; "
                      f"{ratio:.1f}x faster than {wanted[0]}")  # fmt: skip
    out = Path(__file__).parent / "results" / "site_page.json"
    record = {"command": shlex.join(["python", "benchmarks/site_page_bench.py", *sys.argv[1:]]),
              "params": params | {"storage": args.storage, "runs": args.runs,
                                  "threads": args.threads},
              "load_average_1m": {"before": load_before[0], "after": load_after[0]},
              "verified": "every answer of every run equal to site_page_model.py's",
              "visit_cache_bytes": args.visit_cache_bytes, "churn_events": args.churn,
              "modes": {m: {"requests": measured[m][0], "whole_page": measured[m][1]}
                        for m in modes}}  # fmt: skip
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
