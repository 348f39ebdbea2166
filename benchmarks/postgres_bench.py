"""PostgreSQL delivery rate: events/s from the archive into a private PostgreSQL, with the
CPU of the delivery process and of PostgreSQL per event.

    .venv/bin/python benchmarks/postgres_bench.py [--events 200000] [--batch-bytes 4194304]
    .venv/bin/python benchmarks/postgres_bench.py --compare-partitions 1000000

Writes an archive of ``--events`` page views (24 hour files) with the record codec, starts
a private PostgreSQL (Debian's binaries, fsync off: the delivery's cost, not the disk's),
runs ``event-analytics deliver`` until the status file says nothing is behind, and checks
that the table holds exactly the archive's events (a fast wrong answer is a failure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
from pg import PostgresServer

from event_analytics.archive import files, record

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, children: bool = True) -> float:
    """User + system CPU of ``pid`` (and of its reaped children) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def live_children_cpu_s(parent: int) -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += cpu_s(int(entry.name))
    return total


def postgres_cpu_s(server: PostgresServer) -> float:
    pid = server.postmaster_pid()
    return cpu_s(pid) + live_children_cpu_s(pid)


def write_archive(root: Path, n: int) -> None:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=24)
    per_hour = max(1, n // 24)
    for hour in range(24):
        t = start + timedelta(hours=hour)
        path = files.hour_path(root, t)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            for i in range(per_hour if hour < 23 else n - 23 * per_hour):
                ts = t + timedelta(seconds=i % 3600)
                payload = {"page_url": f"https://shop.example/p{i % 50}", "referrer":
                           "https://www.google.com/", "source": "Google", "browser": "Firefox",
                           "os": "Linux", "device": "Desktop", "country": "DE"}  # fmt: skip
                rec = record.Record(uuid.uuid4(), f"u{i % 5000}", ts, "page_view", payload, ts)
                out.write(record.encode(rec) + b"\n")


QUERIES = {
    "a day's visitors": "SELECT count(DISTINCT user_id) FROM {t} "
    "WHERE ts >= '2026-10-15' AND ts < '2026-10-16'",
    "a week's signups per day": "SELECT date_trunc('day', ts), count(*) FROM {t} "
    "WHERE event_type = 'signup' AND ts >= '2026-10-10' AND ts < '2026-10-17' GROUP BY 1",
    "an hour's events": "SELECT count(*) FROM {t} WHERE ts >= '2026-10-20 10:00' "
    "AND ts < '2026-10-20 11:00'",
}


def compare_partitions(url: str, rows: int, days: int = 60) -> None:
    """The same rows in a table partitioned by day and one partitioned by month: load
    time and the median of 7 runs of each query (times from EXPLAIN ANALYZE)."""
    spacing = days * 86400 / rows
    with psycopg.connect(url, autocommit=True) as conn:
        for kind in ("day", "month"):
            t = f"p_{kind}"
            conn.execute(f"CREATE TABLE {t} (event_id uuid NOT NULL, user_id text NOT NULL, "
                         "ts timestamptz NOT NULL, event_type text NOT NULL, page text, "
                         "payload jsonb NOT NULL, PRIMARY KEY (event_id, ts)) "
                         "PARTITION BY RANGE (ts)")  # fmt: skip
            conn.execute(f"CREATE INDEX ON {t} (ts)")
            conn.execute(f"CREATE INDEX ON {t} (event_type, ts)")
            start = datetime(2026, 9, 1, tzinfo=UTC)
            step = timedelta(days=1)
            parts = []
            at = start
            while at < start + timedelta(days=days + 1):
                nxt = at + step if kind == "day" else (at + timedelta(days=32)).replace(day=1)
                parts.append((at, nxt))
                at = nxt
            for i, (lo, hi) in enumerate(parts):
                conn.execute(f"CREATE TABLE {t}_{i} PARTITION OF {t} FOR VALUES FROM "
                             f"('{lo.isoformat()}') TO ('{hi.isoformat()}')")  # fmt: skip
            began = time.perf_counter()
            conn.execute(
                f"INSERT INTO {t} SELECT gen_random_uuid(), 'u' || (i % 5000), "
                f"timestamptz '2026-09-01' + i * interval '{spacing} seconds', "
                "CASE WHEN i % 10 = 0 THEN 'signup' ELSE 'page_view' END, "
                "'https://shop.example/p' || (i % 50), '{}'::jsonb "
                f"FROM generate_series(0, {rows - 1}) AS i"
            )
            load_s = time.perf_counter() - began
            conn.execute(f"ANALYZE {t}")
            timings = []
            for name, query in QUERIES.items():
                runs = []
                for _ in range(7):
                    plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query.format(t=t))
                    found = plan.fetchone()
                    assert found is not None
                    top = found[0][0]
                    runs.append(top["Planning Time"] + top["Execution Time"])
                timings.append(f"{name} {sorted(runs)[3]:.2f} ms")
            print(f"by {kind}: {len(parts)} partitions, load {rows / load_s:,.0f} rows/s; "
                  + "; ".join(timings))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument(
        "--compare-partitions", type=int, metavar="ROWS", help="only compare day vs month"
    )
    args = parser.parse_args()
    server = PostgresServer()
    server.init()
    server.start()
    if args.compare_partitions:
        try:
            compare_partitions(server.new_database(), args.compare_partitions)
        finally:
            server.stop("immediate")
            server.remove()
        return 0
    try:
        url = server.new_database()
        with tempfile.TemporaryDirectory(prefix="ea-pgbench-") as tmp:
            root = Path(tmp) / "archive"
            write_archive(root, args.events)
            size = sum(f.size_bytes for f in files.list_files(root))
            env = {k: v for k, v in os.environ.items() if k != "EA_SETTINGS_JSON"}
            env |= {"EA_DATA_DIR": str(Path(tmp) / "data"), "EA_ARCHIVE_DIR": str(root),
                    "EA_POSTGRES_URL": url,
                    "EA_POSTGRES_BATCH_BYTES": str(args.batch_bytes)}  # fmt: skip
            status = Path(tmp) / "data" / "destinations" / "postgres.json"
            pg_before = postgres_cpu_s(server)
            began = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "event_analytics", "deliver"], env=env)
            deadline = time.monotonic() + 3600
            try:
                while True:
                    time.sleep(0.05)
                    try:
                        found = orjson.loads(status.read_bytes())
                    except (OSError, orjson.JSONDecodeError):
                        found = {}
                    if found.get("events_behind") == 0 and found.get("state") == "running":
                        break
                    assert proc.poll() is None, "deliver exited"
                    assert time.monotonic() < deadline, "not caught up within an hour"
                seconds = time.perf_counter() - began
                deliver_cpu = cpu_s(proc.pid, children=False)
                pg_cpu = postgres_cpu_s(server) - pg_before
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            with psycopg.connect(url) as conn:
                rows, distinct = conn.execute(
                    "SELECT count(*), count(DISTINCT event_id) FROM ea_events"
                ).fetchone() or (0, 0)
                table_bytes = conn.execute(
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                    "WHERE inhparent = 'ea_events'::regclass"
                ).fetchone()
        ok = rows == distinct == args.events
        n = args.events
        print(f"PostgreSQL delivery: {n:,} events ({size / 1e6:.1f} MB of JSONL) in "
              f"{seconds:.2f} s = {n / seconds:,.0f} events/s (includes the status poll, "
              f"<= 1 s); deliver CPU {deliver_cpu / n * 1e6:.1f} us/event, PostgreSQL CPU "
              f"{pg_cpu / n * 1e6:.1f} us/event; table + indexes "
              f"{int(table_bytes[0] or 0) / 1e6 if table_bytes else 0:.1f} MB; "
              f"rows {rows:,} = archive: {'PASS' if ok else 'FAIL'}")  # fmt: skip
        return 0 if ok else 1
    finally:
        server.stop("immediate")
        server.remove()


if __name__ == "__main__":
    sys.exit(main())
