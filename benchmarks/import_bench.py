"""Import rate: events per second of ``event-analytics import`` of an NDJSON file.

Writes ``--events`` of our own records (``--users`` users, ``--pages`` pages, spread over
``--hours`` hours ten days ago: older than the live window, so all take the archive
path) and runs the real command as a subprocess on a private engine run as the service
runs it (AOF, fsync always). Prints events/s (wall, the whole command: reading,
validating, the id check, appending with fsync, and counting what was appended) and the
CPU per event of the import process and of the engine (on 2 cores the two together bound
the rate), then checks the archive holds every event once and that a second run adds
nothing.

    .venv/bin/python benchmarks/import_bench.py [--events 300000]   (make bench: 3,000,000)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import redis
from procs import EngineProcess

from event_analytics.archive import files
from event_analytics.store.embedded import find_server_binary


def write_file(path: Path, n: int, users: int, pages: int, hours: int) -> None:
    start = (datetime.now(UTC) - timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
    with path.open("wb") as out:
        for i in range(n):
            ts = start + timedelta(seconds=i * hours * 3600 // n)
            out.write(orjson.dumps({
                "event_id": str(uuid.UUID(int=i + 1)), "user_id": f"u{i * 7919 % users}",
                "timestamp": ts.isoformat(), "event_type": "page_view",
                "payload": {"page_url": f"https://example.com/p{i % pages}"},
            }) + b"\n")  # fmt: skip


def _engine_cpu(url: str) -> float:
    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"] + info["used_cpu_sys"])


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run_import(url: str, root: Path, src: Path) -> tuple[float, str, float, float]:
    """Wall seconds, the command's output, its CPU seconds and the engine's."""
    env = {**os.environ, "REDIS_URL": url, "EA_ARCHIVE_DIR": str(root)}
    engine, own = _engine_cpu(url), _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "event_analytics", "import", str(src)],
        env=env, capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr}")
    return seconds, done.stdout, _children_cpu() - own, _engine_cpu(url) - engine


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--hours", type=int, default=48)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ea-import-bench-"))
    try:
        src, root = work / "history.ndjson", work / "archive"
        write_file(src, args.events, args.users, args.pages, args.hours)
        with EngineProcess(find_server_binary(), work / "engine") as engine:
            seconds, out, cpu, engine_cpu = run_import(engine.url, root, src)
            again_s, again, _, _ = run_import(engine.url, root, src)
        lines = sum(1 for f in files.list_files(root) for _ in files.read_lines([f.path]))
        assert f"accepted {args.events}, duplicate 0" in out, out
        assert f"accepted 0, duplicate {args.events}" in again, again
        assert lines == args.events, (lines, args.events)
        print(
            f"import of {args.events:,} events: {args.events / seconds:,.0f} events/s "
            f"(wall {seconds:.1f} s, the whole command; load {os.getloadavg()[0]:.1f}); CPU per "
            f"event: import {cpu * 1e6 / args.events:.1f} µs, engine "
            f"{engine_cpu * 1e6 / args.events:.1f} µs; a second run (all duplicates) "
            f"{again_s:.1f} s; archive checked: every event once"
        )
        print(out.strip())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
