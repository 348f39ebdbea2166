"""`make bench`: throughput and latency ratios measured in one run on this machine.

Starts, one after the other: a bare ASGI app under uvicorn and under granian (the faster
of the two is the ceiling for Python HTTP ingest), the service with single events, the
service with batches of 100, redis-benchmark (the storage ceiling), query latency under
full ingest load, and `rebuild` from the archive the runs produced. Every run checks that
the stored counts match the acknowledged events. Prints one table and writes the same as
JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import redis
from procs import EngineProcess, free_port, stop_group
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
console = Console()
# The benchmark runs the embedded engine: an outer REDIS_URL must not redirect it.
ENV = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "EA_REDIS_URL")}


def need(tool: str, package: str) -> str:
    """A Debian tool, installed on first use when we are root."""
    found = shutil.which(tool)
    if found:
        return found
    if os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)
        found = shutil.which(tool)
    if not found:
        sys.exit(f"bench: {tool} is missing: apt-get install {package}")
    return found


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def process(argv: list[str], cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, env=ENV, cwd=cwd,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        stop_group(proc)


# Where the CPU goes, by the role of each process under the server we started.
ROLES = (("engine", "valkey-server"), ("archiver", " archiver"), ("api", "spawn_main"),
         ("api", "granian"))  # fmt: skip


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command line, CPU seconds used so far), for every process."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode("latin-1")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
        table[int(entry.name)] = (int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / tick)
    return table


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds used so far by ``root`` and its descendants, summed by role."""
    table = _proc_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _, _) in table.items():
        children[ppid].append(pid)
    used: dict[str, float] = defaultdict(float)
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children[pid])
        if pid in table:
            cmd = table[pid][1]
            used[next((role for role, needle in ROLES if needle in cmd), "supervisor")] += table[
                pid
            ][2]
    return used


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(
    url: str,
    seconds: int,
    connections: int,
    ts: str,
    batch: int = 0,
    server: int | None = None,
    mode: str = "native",
) -> dict[str, Any]:
    """Run wrk with events.lua; requests/s, latency percentiles, the ack counts and, for the
    processes under ``server`` and for wrk itself ("load"), the CPU seconds the run took."""
    prefix = secrets.token_hex(4)
    before = cpu_by_role(server) if server else {}
    load_before = _children_cpu()
    out = subprocess.run(
        [need("wrk", "wrk"), "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(HERE / "events.lua"), url, "--", ts, prefix, str(batch), mode],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = {"load": _children_cpu() - load_before}  # wrk is our only child to end meanwhile
    if server:
        after = cpu_by_role(server)
        cpu |= {role: after[role] - before.get(role, 0.0) for role in after}

    def grab(pattern: str) -> str:
        match = re.search(pattern, out, re.M)
        if not match:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return match[1]

    def ms(text: str) -> float:
        value = float(re.match(r"[\d.]+", text)[0])  # type: ignore[index]
        return (
            value / 1000
            if text.endswith("us")
            else value * 1000
            if text.endswith("s") and not text.endswith("ms")
            else value
        )

    return {
        "rps": float(grab(r"Requests/sec:\s+([\d.]+)")),
        "p50_ms": ms(grab(r"^\s+50%\s+(\S+)")),
        "p99_ms": ms(grab(r"^\s+99%\s+(\S+)")),
        "acked": int(grab(r"^ACKED (\d+)")),
        "bad": int(grab(r"^BAD (\d+)")),
        "generated": int(grab(r"^GENERATED (\d+)")),
        "cpu_s": cpu,
    }


# Seconds of single events sent before the first measured run (not counted in it).
WARM_UP_S = 3

# The bare app under each HTTP server, as ``serve`` would run it (httptools, uvloop).
BARE_SERVERS = {
    "uvicorn": lambda port, workers: [
        str(VENV_BIN / "uvicorn"), "bare_app:app", "--port", str(port), "--workers",
        str(workers), "--log-level", "warning", "--no-access-log", "--http", "httptools",
        "--loop", "uvloop"],
    "granian": lambda port, workers: [
        str(VENV_BIN / "granian"), "--interface", "asgi", "--port", str(port), "--workers",
        str(workers), "--log-level", "warning", "--no-ws", "--loop", "uvloop",
        "bare_app:app"],
}  # fmt: skip


def bare_run(server_name: str, args: argparse.Namespace, ts: str) -> dict[str, Any]:
    port = free_port()
    with process(BARE_SERVERS[server_name](port, args.workers), cwd=HERE) as bare_server:
        wait_http(f"http://127.0.0.1:{port}/")
        bare = wrk(f"http://127.0.0.1:{port}/events", args.seconds, args.connections, ts,
                   server=bare_server.pid)  # fmt: skip
    bare["cpu_us_per_event"] = cpu_per_event(bare, int(bare["acked"]))
    return bare


def cpu_per_event(run: dict[str, Any], events: int) -> dict[str, float]:
    """Microseconds of CPU per event by role, their total, and the event rate this
    machine's cores could sustain at that cost if nothing else ran."""
    us = {role: round(seconds * 1e6 / max(1, events), 1) for role, seconds in run["cpu_s"].items()}
    us["total"] = round(sum(us.values()), 1)
    us["cores_ceiling_per_s"] = round((os.cpu_count() or 1) * 1e6 / max(us["total"], 1e-9))
    return us


def settled(read: Callable[[], int], timeout_s: float = 10.0) -> int:
    """A count once two readings 0.5 s apart agree. wrk exits with requests in flight, and
    what the service still stores of them would land in the next run's count: a Segment
    row once read 800 events more than it generated (the batch run's last requests)."""
    last = read()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now == last:
            break
        last = now
    return last


def page_views_since(base: str, since: datetime) -> int:
    """Page views counted from ``since``'s minute to now (what /api/event adds: it is
    stamped on arrival, so not in the one minute the other runs write), settled."""
    start = (since - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:00Z")

    def read() -> int:
        end = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:00Z")
        params = {"from": start, "to": end, "interval": "minute"}
        r = httpx.get(f"{base}/analytics/timeseries", params=params, timeout=30)
        return int(r.json()["total"]["count"])

    return settled(read)


def stored_in_minute(base: str, ts: str) -> int:
    """The page views stored in ``ts``'s minute, settled."""
    minute = ts[:16].replace("T", "_")

    def read() -> int:
        r = httpx.get(f"{base}/analytics/minute-buckets/page_view_{minute}", timeout=30)
        return int(r.json()["count"])

    return settled(read)


def check_counts(name: str, run: dict[str, float], stored: int, batch: int) -> dict[str, Any]:
    """Stored must hold every acknowledged event, and nothing that was never generated."""
    size = batch or 1
    acked = int(run["acked"]) * size
    generated = int(run["generated"])  # events.lua counts events, not requests
    ok = run["bad"] == 0 and acked <= stored <= generated
    verdict = "PASS" if ok else "FAIL"
    console.print(
        f"  {name}: acknowledged {acked}, stored {stored}, generated {generated}: {verdict}"
    )
    return {"acknowledged": acked, "stored": stored, "generated": generated, "check": verdict}


async def query_latency(base: str, seconds: float, paths: list[str]) -> dict[str, float]:
    """p50/p99 of read queries sent one after another while ingest runs."""
    samples: dict[str, list[float]] = {p: [] for p in paths}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(base) as session:
        while time.monotonic() < deadline:
            for path in paths:
                start = time.perf_counter()
                async with session.get(path) as r:
                    await r.read()
                    assert r.status == 200, (path, r.status)
                samples[path].append((time.perf_counter() - start) * 1000)
    out: dict[str, float] = {}
    for path, values in samples.items():
        values.sort()
        name = path.split("?")[0].rsplit("/", 1)[-1]
        name = "minute-bucket" if name.startswith("page_view_") else name
        out[f"{name}_p50_ms"] = statistics.median(values)
        out[f"{name}_p99_ms"] = values[min(len(values) - 1, int(len(values) * 0.99))]
    return out


def redis_benchmark(server_bin: str, work: Path) -> float:
    """Pipelined INCR on a private server with AOF and fsync always: the storage ceiling."""
    with EngineProcess(server_bin, work) as engine:
        out = subprocess.run(
            [need("redis-benchmark", "redis-tools"), "-p", str(engine.port), "-t", "incr",
             "-P", "16", "-n", "300000", "-c", "32", "-q"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout  # fmt: skip
    return float(re.findall(r"([\d.]+) requests per second", out)[-1])


def engine_client(data_dir: Path, decode_responses: bool = False) -> redis.Redis:
    """A client of the embedded engine ``serve`` started for ``data_dir``."""
    url = (data_dir / "valkey" / "url").read_text().strip()
    return redis.Redis.from_url(url, decode_responses=decode_responses)


def engine_memory(data_dir: Path) -> int:
    client = engine_client(data_dir)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


# Key name ending -> what it holds (keys.py names them; the rest is "other").
MEMORY_KINDS = (
    ("dedup", re.compile(r":seen:[^:]+$")),
    ("stream", re.compile(r":stream$")),
    ("counters", re.compile(r":count$")),
    ("pages", re.compile(r":pages$")),
    ("uniques", re.compile(r":(users|hll|page_users|page_hll:[0-9a-f]+)$")),
)


def engine_memory_by_kind(data_dir: Path, events: int) -> dict[str, float]:
    """Bytes per stored event held by each kind of key (MEMORY USAGE of every key)."""
    client = engine_client(data_dir, decode_responses=True)
    used: dict[str, int] = defaultdict(int)
    try:
        for key in client.scan_iter(count=1000):
            kind = next((k for k, pattern in MEMORY_KINDS if pattern.search(key)), "other")
            used[kind] += int(client.memory_usage(key, samples=0) or 0)
    finally:
        client.close()
    return {kind: round(total / max(1, events), 1) for kind, total in sorted(used.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="length of each load run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    if args.seconds < 4:
        # Query latency is sampled for seconds - 2 (after the load has begun).
        parser.error("--seconds must be at least 4")
    need("wrk", "wrk")
    work = Path(tempfile.mkdtemp(prefix="ea-bench-"))
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": vars(args),
    }  # fmt: skip
    ts = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    console.print(f"[bold]1. bare ASGI ceiling[/] ({args.workers} workers, uvicorn and granian)")
    for server_name in BARE_SERVERS:
        results[f"bare_{server_name}"] = bare_run(server_name, args, ts)
    # The ceiling is the faster of the two servers (issue 14); both rows are printed.
    ceiling = max(BARE_SERVERS, key=lambda name: results[f"bare_{name}"]["rps"])
    bare = results["bare_asgi"] = {**results[f"bare_{ceiling}"], "server": ceiling}

    console.print("[bold]2. service, single events[/] (embedded Valkey, fsync always)")
    data_dir = work / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [str(VENV_BIN / "event-analytics"), "serve", "--port", str(port), "--data-dir",
             str(data_dir), "--workers", str(args.workers)]  # fmt: skip
    with process(serve) as server:
        wait_http(f"{base}/health/ready")
        # Not measured: a worker is ready before it has loaded the enrichment data (in a
        # thread) and frozen what it holds (api/app.py). Measured at once, the single row
        # measured that start-up too (p99 317 ms where the warm service gives ~40 ms).
        warm = wrk(f"{base}/events", WARM_UP_S, args.connections, ts, server=server.pid)
        warmed = stored_in_minute(base, ts)
        warm_check = check_counts("warm-up", warm, warmed, 0)["check"]
        memory_before = engine_memory(data_dir)
        single = wrk(f"{base}/events", args.seconds, args.connections, ts, server=server.pid)
        single |= check_counts("single", single, stored_in_minute(base, ts) - warmed, 0)
        if warm_check != "PASS":
            single["check"] = "FAIL"
        single["cpu_us_per_event"] = cpu_per_event(single, single["acknowledged"])
        single["redis_bytes_per_event"] = round(
            (engine_memory(data_dir) - memory_before) / max(1, single["stored"])
        )
        # Dedup ids and the stream grow with every event; unique users and pages with the
        # distinct users and pages (10,000 and 50 here, in one minute, hour and day). The
        # stream is what the archiver has not yet trimmed.
        single["redis_bytes_per_event_by_kind"] = engine_memory_by_kind(data_dir, single["stored"])
        results["single"] = single

        console.print(f"[bold]3. service, batches of {args.batch}[/]")
        before = stored_in_minute(base, ts)
        batch = wrk(f"{base}/events", args.seconds, args.connections // 4, ts, args.batch,
                    server=server.pid)  # fmt: skip
        batch["events_per_s"] = batch["rps"] * args.batch
        batch |= check_counts("batch", batch, stored_in_minute(base, ts) - before, args.batch)
        batch["cpu_us_per_event"] = cpu_per_event(batch, batch["acknowledged"])
        results["batch"] = batch

        console.print(f"[bold]3b. Segment's /v1/batch, the Python SDK's shape, {args.batch}/req[/]")
        before = stored_in_minute(base, ts)
        seg = wrk(f"{base}/v1/batch", args.seconds, args.connections // 4, ts, args.batch,
                  server=server.pid, mode="segment")  # fmt: skip
        seg["events_per_s"] = seg["rps"] * args.batch
        seg |= check_counts("segment", seg, stored_in_minute(base, ts) - before, args.batch)
        seg["cpu_us_per_event"] = cpu_per_event(seg, seg["acknowledged"])
        results["segment_batch"] = seg

        console.print("[bold]3c. Plausible's /api/event, as the script tag sends it[/]")
        started = datetime.now(UTC)
        before = page_views_since(base, started)
        pl = wrk(f"{base}/api/event", args.seconds, args.connections, ts, server=server.pid,
                 mode="plausible")  # fmt: skip
        pl |= check_counts("api/event", pl, page_views_since(base, started) - before, 0)
        pl["cpu_us_per_event"] = cpu_per_event(pl, pl["acknowledged"])
        results["plausible_event"] = pl

        console.print("[bold]5. query latency under full single-event ingest[/]")
        hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:00Z")
        paths = ["/analytics/page_views_per_minute?minutes=60",
                 f"/analytics/timeseries?interval=minute&from={hour_ago}&to={ts}",
                 f"/analytics/minute-buckets/page_view_{ts[:16].replace('T', '_')}"]  # fmt: skip
        with process(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "-s",
                      str(HERE / "events.lua"), f"{base}/events", "--", ts]):  # fmt: skip
            time.sleep(1)
            results["query_under_load"] = asyncio.run(query_latency(base, args.seconds - 2, paths))
        # Let the archiver catch up before the rebuild reads its files.
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/persistent/status", timeout=10).json()["stats"]["stream_length"]:
            if time.monotonic() > deadline:
                raise RuntimeError("archiver did not catch up")
            time.sleep(0.5)
        live_total = stored_in_minute(base, ts)

    console.print("[bold]4. redis-benchmark[/] (pipelined INCR, AOF fsync always)")
    from event_analytics.store.embedded import find_server_binary

    results["redis_benchmark_incr_per_s"] = redis_benchmark(find_server_binary(), work / "rb")

    console.print("[bold]6. rebuild from the archive[/]")
    out = subprocess.run(
        [str(VENV_BIN / "event-analytics"), "rebuild", "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True, env=ENV,
    ).stdout  # fmt: skip
    rebuilt = int(re.search(r": (\d+) events in", out)[1])  # type: ignore[index]
    results["rebuild"] = {
        "events": rebuilt,
        "events_per_s": float(re.search(r"\(([\d,]+) events/s\)", out)[1].replace(",", "")),  # type: ignore[index]
        "check": "PASS" if rebuilt >= live_total else "FAIL",
    }

    single_rps = results["single"]["rps"]
    results["ratios"] = {
        "single_vs_bare": round(single_rps / bare["rps"], 3),
        # Issue 14's target: batches of 100 carry at least as many events/s as the
        # ceiling answers requests/s.
        "batch_events_vs_bare": round(results["batch"]["events_per_s"] / bare["rps"], 3),
        "batch_events_vs_single": round(results["batch"]["events_per_s"] / single_rps, 2),
        "rebuild_vs_batch": round(
            results["rebuild"]["events_per_s"] / results["batch"]["events_per_s"], 2
        ),
        "single_vs_redis_incr": round(single_rps / results["redis_benchmark_incr_per_s"], 4),
        # Issue 15's budget: the drop-in paths at most 1.5x the native CPU per event.
        "segment_cpu_vs_batch": round(
            results["segment_batch"]["cpu_us_per_event"]["total"]
            / results["batch"]["cpu_us_per_event"]["total"],
            2,
        ),
        "plausible_cpu_vs_single": round(
            results["plausible_event"]["cpu_us_per_event"]["total"]
            / results["single"]["cpu_us_per_event"]["total"],
            2,
        ),
        # The most single events these cores could take if the API's Python cost no more
        # than the bare app's, with the engine and archiver as measured: an upper bound.
        "single_bound_vs_bare": round(single_bound(results) / bare["rps"], 3),
    }
    checks = [results[k]["check"] for k in ("single", "batch", "segment_batch",
                                             "plausible_event", "rebuild")]  # fmt: skip
    results["all_checks"] = "PASS" if all(c == "PASS" for c in checks) else "FAIL"
    print_table(results)
    print_cpu_table(results)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = results["when"].replace(":", "").replace("-", "")
    for name in (f"bench-{stamp}.json", "latest.json"):
        (out_dir / name).write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if results["all_checks"] == "PASS" else 1


def single_bound(r: dict[str, Any]) -> float:
    bare, single = r["bare_asgi"]["cpu_us_per_event"], r["single"]["cpu_us_per_event"]
    floor = bare["total"] + single.get("engine", 0.0) + single.get("archiver", 0.0)
    return float((os.cpu_count() or 1) * 1e6 / floor)


def print_cpu_table(r: dict[str, Any]) -> None:
    roles = ("api", "engine", "archiver", "supervisor", "load")
    table = Table(title="CPU per event (us), from /proc, by process role")
    for col in ("run", *roles, "total", "cores' ceiling"):
        table.add_column(col, justify="right")
    for name, key in (("bare uvicorn", "bare_uvicorn"), ("bare granian", "bare_granian"),
                      ("POST /events", "single"),
                      ("POST /events/batch", "batch"), ("POST /v1/batch", "segment_batch"),
                      ("POST /api/event", "plausible_event")):  # fmt: skip
        us = r[key]["cpu_us_per_event"]
        table.add_row(
            name,
            *(f"{us[role]:.0f}" if role in us else "-" for role in roles),
            f"{us['total']:.0f}",
            f"{us['cores_ceiling_per_s']:,}/s",
        )
    console.print(table)
    console.print(
        f"bound for single events (API as cheap as bare ASGI, engine and archiver as "
        f"measured): {single_bound(r):,.0f} req/s = "
        f"{r['ratios']['single_bound_vs_bare']:.0%} of bare"
    )


def print_table(r: dict[str, Any]) -> None:
    setup = r["settings"]
    title = (
        f"event-analytics bench ({r['machine']['cpus']} CPUs, {setup['workers']} workers, "
        f"{setup['connections']} connections)"
    )
    table = Table(title=title)
    for col in ("run", "throughput", "p50", "p99", "counts"):
        table.add_column(col)
    s, bt = r["single"], r["batch"]
    q = r["query_under_load"]
    for server_name in BARE_SERVERS:
        b = r[f"bare_{server_name}"]
        ceiling = " = ceiling" if r["bare_asgi"]["server"] == server_name else ""
        table.add_row(
            f"bare ASGI, {server_name} (parse JSON only){ceiling}",
            f"{b['rps']:,.0f} req/s",
            f"{b['p50_ms']:.1f} ms",
            f"{b['p99_ms']:.1f} ms",
            "-",
        )
    table.add_row(
        "POST /events (durable ack)",
        f"{s['rps']:,.0f} req/s",
        f"{s['p50_ms']:.1f} ms",
        f"{s['p99_ms']:.1f} ms",
        s["check"],
    )
    table.add_row(
        f"POST /events/batch ({r['settings']['batch']}/req)",
        f"{bt['events_per_s']:,.0f} events/s",
        f"{bt['p50_ms']:.1f} ms",
        f"{bt['p99_ms']:.1f} ms",
        bt["check"],
    )
    seg, pl = r["segment_batch"], r["plausible_event"]
    table.add_row(
        f"POST /v1/batch (Segment, {r['settings']['batch']}/req)",
        f"{seg['events_per_s']:,.0f} events/s",
        f"{seg['p50_ms']:.1f} ms",
        f"{seg['p99_ms']:.1f} ms",
        seg["check"],
    )
    table.add_row(
        "POST /api/event (Plausible)",
        f"{pl['rps']:,.0f} req/s",
        f"{pl['p50_ms']:.1f} ms",
        f"{pl['p99_ms']:.1f} ms",
        pl["check"],
    )
    table.add_row(
        "redis-benchmark INCR -P16", f"{r['redis_benchmark_incr_per_s']:,.0f} ops/s", "-", "-", "-"
    )
    for key in q:
        if key.endswith("_p50_ms"):
            name = key[: -len("_p50_ms")]
            table.add_row(
                f"query {name} under load",
                "-",
                f"{q[key]:.1f} ms",
                f"{q[name + '_p99_ms']:.1f} ms",
                "-",
            )
    table.add_row(
        "rebuild from archive",
        f"{r['rebuild']['events_per_s']:,.0f} events/s",
        "-",
        "-",
        r["rebuild"]["check"],
    )
    console.print(table)
    ratios = r["ratios"]
    console.print(
        f"single / ceiling = {ratios['single_vs_bare']:.0%}   batch events / ceiling = "
        f"{ratios['batch_events_vs_bare']:.2f}x   batch events / single = "
        f"{ratios['batch_events_vs_single']:.1f}x   "
        f"rebuild / batch = {ratios['rebuild_vs_batch']:.1f}x   "
        f"CPU per event: /v1/batch / batch = {ratios['segment_cpu_vs_batch']:.2f}x, "
        f"/api/event / single = {ratios['plausible_cpu_vs_single']:.2f}x (budget 1.5x)   "
        f"Redis bytes per event = {s['redis_bytes_per_event']}   all checks: {r['all_checks']}"
    )
    kinds = s["redis_bytes_per_event_by_kind"]
    console.print(
        "  of which (MEMORY USAGE by key kind, bytes per event): "
        + ", ".join(f"{kind} {value:g}" for kind, value in kinds.items())
    )


if __name__ == "__main__":
    raise SystemExit(main())
