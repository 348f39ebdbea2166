"""Top pages over a day of many pages (issue 23): the worst shape, every page seen once an
hour, so a 24-hour range merges 24 hour buckets of PAGES members each.

Seeds a private engine through the real ingest path (Ingestor, ingest.lua; the hour
buckets hold every page: EA_MAX_PAGES_PER_BUCKET = PAGES), then times what
``GET /analytics/top-pages`` over those 24 hours does (plan_top_pages, the ZCARDs, the
ranking, the unique users of the pages returned), alternating the ``--base`` revision's
store/reads.py and Lua scripts (``git show``) and this tree's in one process, and prints
each run's time, the engine's time (INFO commandstats), this process's CPU time (what a
query process spends) and the load average. Both answers are checked against the model
(every page once an hour, by its own users).

    .venv/bin/python benchmarks/top_pages_day.py --pages 20000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
from procs import EngineProcess

from event_analytics.config import Settings
from event_analytics.counter_queries import plan_top_pages
from event_analytics.ingest import Ingestor
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter
from event_analytics.store import reads as this_reads
from event_analytics.store.embedded import find_server_binary
from event_analytics.store.scripts import Lua
from event_analytics.timebucket import Interval, floor

HOURS = 24
ROOT = Path(__file__).resolve().parent.parent


def _git_show(rev: str, path: str) -> bytes:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                          capture_output=True).stdout  # fmt: skip


def _base_module(rev: str, scratch: Path) -> ModuleType:
    """store/reads.py as it is at ``rev``, loaded beside this tree's, registering the
    Lua scripts (figures.lua, members.lua) as they are at ``rev`` too."""
    path = scratch / "reads_base.py"
    path.write_bytes(_git_show(rev, "src/event_analytics/store/reads.py"))
    spec = importlib.util.spec_from_file_location("reads_base", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def register(client: Any, script: Lua) -> Any:
        text = _git_show(rev, f"src/event_analytics/store/{script.value}.lua").decode()
        return client.register_script(text)

    module.register = register  # type: ignore[attr-defined]
    # From session 24 the ranking lives in store/ranking.py: the revision's own, where
    # it has one (reads.py imported this tree's by name).
    try:
        ranking = _git_show(rev, "src/event_analytics/store/ranking.py")
    except subprocess.CalledProcessError:
        return module
    (scratch / "ranking_base.py").write_bytes(ranking)
    spec = importlib.util.spec_from_file_location("ranking_base", scratch / "ranking_base.py")
    assert spec is not None and spec.loader is not None
    base_ranking = importlib.util.module_from_spec(spec)
    sys.modules["ranking_base"] = base_ranking  # dataclasses look their module up
    spec.loader.exec_module(base_ranking)
    module.rank = base_ranking.rank  # type: ignore[attr-defined]
    return module


async def _seed(settings: Settings, start: datetime, pages: int) -> None:
    store = IngestWriter.from_settings(settings)
    ingestor = Ingestor(settings, store)
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    batch = []
    for h in range(HOURS):
        for p in range(pages):
            ts = start + timedelta(hours=h, seconds=p % 3600)
            body = {"event_id": str(uuid.uuid4()), "user_id": f"u{h}-{p}",
                    "timestamp": ts.isoformat(), "event_type": "page_view",
                    "payload": {"page_url": f"https://ex.com/p{p}"}}  # fmt: skip
            batch.append(ingestor.prepare(EVENT_ADAPTER.validate_python(body), now))
            if len(batch) == 2000:
                await store.ingest(batch, stream=False)
                batch = []
    if batch:
        await store.ingest(batch, stream=False)
    await store.close()
    print(f"seeded {HOURS * pages:,} events in {time.perf_counter() - t0:.0f} s")


def _engine_ms(engine: redis.Redis) -> float:
    """The engine's time in commands since the last call (INFO commandstats), reset."""
    stats = engine.info("commandstats")
    engine.config_resetstat()
    return sum(v["usec"] for k, v in stats.items() if "config" not in k) / 1000


async def _route(reads: Any, engine: redis.Redis, start: datetime, limit: int) -> dict[str, Any]:
    """What the route does, timed: the ranking (ZCARDs and merge), then the users."""
    plan = plan_top_pages("page_view", start, start + timedelta(hours=HOURS), limit,
                          now=start + timedelta(hours=HOURS + 1), uniques="approx",
                          max_points=1440)  # fmt: skip
    _engine_ms(engine)
    cpu = time.process_time()
    t0 = time.perf_counter()
    sized = await reads.ranked_entries("page_view", plan.level, plan.buckets)
    top = await reads.top_pages("page_view", plan.level, plan.buckets, limit, sized)
    t1 = time.perf_counter()
    ranking_engine = _engine_ms(engine)
    pages = [u for u, _ in top.pages]
    t2 = time.perf_counter()
    users = await reads.page_users("page_view", plan.level, plan.buckets, pages, plan.source)
    t3 = time.perf_counter()
    cpu = time.process_time() - cpu
    return {"ranking": (t1 - t0) * 1000, "users": (t3 - t2) * 1000,
            "ranking_engine": ranking_engine, "users_engine": _engine_ms(engine),
            "cpu": cpu * 1000,
            "answer": (top.pages, users)}  # fmt: skip


async def run(args: argparse.Namespace, url: str, engine: redis.Redis, base: ModuleType) -> bool:
    start = floor(datetime.now(UTC) - timedelta(hours=HOURS + 2), Interval.HOUR)
    settings = Settings(redis_url=url, max_pages_per_bucket=args.pages)
    await _seed(settings, start, args.pages)
    model_top = sorted((f"https://ex.com/p{p}", HOURS) for p in range(args.pages))[: args.limit]
    model = (model_top, [HOURS] * len(model_top))
    store = IngestWriter.from_settings(settings)
    variants = {
        args.base: base.Reads(store, max_cost=10**8),
        "this tree": this_reads.Reads(store, max_cost=10**8),
    }
    ok = True
    try:
        for _ in range(args.repeat):
            for name, reads in variants.items():
                got = await _route(reads, engine, start, args.limit)
                ok &= got["answer"] == model
                same = got["answer"] == model
                print(f"  {name:10} {got['ranking'] + got['users']:6.0f} ms: ranking "
                      f"{got['ranking']:5.0f} ms (engine {got['ranking_engine']:5.0f}), users "
                      f"{got['users']:5.0f} ms (engine {got['users_engine']:5.0f}); this "
                      f"process's CPU {got['cpu']:5.0f} ms; load "
                      f"{os.getloadavg()[0]:.1f}; answer as the model: {same}")  # fmt: skip
    finally:
        await store.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", default="main", help="git revision to compare with")
    parser.add_argument("--server", default=None, help="engine binary (default: bundled)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = _base_module(args.base, Path(tmp))
        binary = args.server or find_server_binary()
        print(f"{binary}: {args.pages:,} pages x {HOURS} hours, limit {args.limit}")
        with EngineProcess(binary, Path(tmp) / "engine", aof=False) as proc:
            client = redis.Redis(port=proc.port)
            return 0 if asyncio.run(run(args, proc.url, client, base)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
