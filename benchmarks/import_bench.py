"""Import rate: events per second of ``event-analytics import`` of an NDJSON file.

Writes ``--events`` of our own records (``--users`` users, ``--pages`` pages, spread over
``--hours`` hours ten days ago: older than the live window, so all take the archive
path) and runs the real command as a subprocess on a private engine run as the service
runs it (AOF, fsync always). Prints events/s (wall, the whole command: reading,
validating, the id check, appending with fsync, and counting what was appended) and the
CPU per event of the import process, of its worker processes (``--workers``, default
EA_IMPORT_WORKERS) and of the engine (on 2 cores the three together bound the rate), then
checks the archive holds every event once and that a second run adds nothing.

    .venv/bin/python benchmarks/import_bench.py [--events 300000] [--workers N]
    (make bench: 3,000,000)
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
from dataclasses import dataclass
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


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a running process, from /proc (None: gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    seconds: float  # wall, the whole command
    output: str
    main_cpu: float  # the import process (read from /proc until it ends: to 0.1 s)
    workers_cpu: float  # its worker processes (all its children, less itself)
    engine_cpu: float


def run_import(url: str, root: Path, src: Path, workers: int | None) -> Run:
    env = {**os.environ, "REDIS_URL": url, "EA_ARCHIVE_DIR": str(root)}
    engine, own = _engine_cpu(url), _children_cpu()
    flags = [] if workers is None else ["--workers", str(workers)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "event_analytics", "import", *flags, str(src)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    main = 0.0
    deadline = time.monotonic() + 3600
    while proc.poll() is None and time.monotonic() < deadline:
        main = _process_cpu(proc.pid) or main
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {err}")
    total = _children_cpu() - own
    return Run(seconds, out, main, total - main, _engine_cpu(url) - engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--workers", type=int, help="import --workers (default: its own)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ea-import-bench-"))
    try:
        src, root = work / "history.ndjson", work / "archive"
        write_file(src, args.events, args.users, args.pages, args.hours)
        with EngineProcess(find_server_binary(), work / "engine") as engine:
            first = run_import(engine.url, root, src, args.workers)
            again = run_import(engine.url, root, src, args.workers)
        lines = sum(1 for f in files.list_files(root) for _ in files.read_lines([f.path]))
        assert f"accepted {args.events}, duplicate 0" in first.output, first.output
        assert f"accepted 0, duplicate {args.events}" in again.output, again.output
        assert lines == args.events, (lines, args.events)
        n = args.events
        print(
            f"import of {n:,} events: {n / first.seconds:,.0f} events/s "
            f"(wall {first.seconds:.1f} s, the whole command; load {os.getloadavg()[0]:.1f}); "
            f"CPU per event: import process {first.main_cpu * 1e6 / n:.1f} µs, workers "
            f"{first.workers_cpu * 1e6 / n:.1f} µs, engine {first.engine_cpu * 1e6 / n:.1f} µs; "
            f"a second run (all duplicates) {again.seconds:.1f} s; archive checked: every "
            "event once"
        )
        print(first.output.strip())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
