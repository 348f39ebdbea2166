"""Ingest under a storm of every heavy read route (issue 23), A/B over ``--query-workers``.

For each setting of ``serve --query-workers`` given (default ``0,1``: the heavy reads in
the ingest worker, then in a query process), one service is started (embedded engine),
PAGES x MINUTES page views are written over the past hours (and archived), then ingest
runs alone and during a storm, at a steady rate and at full speed. The storm: READERS
clients from one address and READERS from another (X-Forwarded-For), each looping over
the counter reads (top pages over 23 h and 4 h with limit=100, the minute series over
23 h) and the archive queries (funnel, retention, query over 7 and 30 days), waiting out
each Retry-After; beside it a process of its own times the cheap reads
(/analytics/realtime, a minute bucket). Full speed is 8 connections whose requests are
written by hand (``--client httpx``: through httpx, as before, which costs the bench ~2 ms
of CPU per event and made the bench's own core the limit of "ingest alone"). Printed per
setting: ingest p50/p99 and throughput alone and during, every offered event acknowledged
and counted, reads answered / refused / timed out and their p50/p99 by kind, CPU seconds
by process group (from /proc) and the bench's own ingest client's. ``serve``, the
readers and the cheap reads' client each run in a session of their own, as a service and
clients on other machines do, not all in the bench's: with autogroups the CPU is shared
between sessions first (``--same-session``: as before).

Targets (issue 23): ingest p99 during <= max(3 x alone, 50 ms), throughput during >= 80 %
of alone, every offered event answered 201, cheap reads p99 <= 100 ms.

    .venv/bin/python benchmarks/query_storm.py --seconds 15 --readers 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.read_storm import _event, served

LIVE_PAGE = "https://ex.com/live"


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


COUNTER_READS = ("top-pages", "timeseries")


def _reads(now: datetime, mix: str = "all") -> list[tuple[str, str, str, dict[str, Any]]]:
    """(kind, method, path, params or body) of every heavy read of the storm; ``mix``
    "counter" or "archive": only the counter reads (engine) or the archive queries."""
    every = _all_reads(now)
    if mix == "all":
        return every
    counter = [r for r in every if r[0].startswith(COUNTER_READS)]
    return counter if mix == "counter" else [r for r in every if r not in counter]


def _all_reads(now: datetime) -> list[tuple[str, str, str, dict[str, Any]]]:
    hours = {h: _iso(now - timedelta(hours=h)) for h in (4, 23)}
    days = {d: _iso(now - timedelta(days=d)) for d in (7, 30)}
    end = _iso(now)
    out: list[tuple[str, str, str, dict[str, Any]]] = [
        ("top-pages 23h", "GET", "/analytics/top-pages", {"from": hours[23], "to": end}),
        ("top-pages 4h", "GET", "/analytics/top-pages",
         {"from": hours[4], "to": end, "limit": "100"}),
        ("timeseries minute 23h", "GET", "/analytics/timeseries",
         {"from": hours[23], "to": end, "interval": "minute"}),
    ]  # fmt: skip
    for d, frm in days.items():
        out += [
            (f"funnel {d}d", "POST", "/analytics/funnel", {
                "from": frm, "to": end, "window_s": 86400,
                "steps": [{"event_type": "page_view", "page_url": "https://ex.com/p1"},
                          {"event_type": "page_view", "page_url": "https://ex.com/p2"},
                          {"event_type": "page_view"}]}),
            (f"retention {d}d", "POST", "/analytics/retention", {
                "from": frm, "to": end, "period": "day", "periods": 7,
                "cohort_event": {"event_type": "page_view"},
                "return_event": {"event_type": "page_view"}}),
            (f"query {d}d", "POST", "/analytics/query", {
                "date_range": [frm, end], "metrics": ["events", "visitors"],
                "dimensions": ["page_url"], "filters": [["is", "event_type", ["page_view"]]],
                "order_by": [["visitors", "desc"]], "pagination": {"limit": 100}}),
        ]  # fmt: skip
    return out


async def _read(client: httpx.AsyncClient, url: str, read: tuple[str, str, str, dict[str, Any]],
                headers: dict[str, str]) -> tuple[int, float, float]:  # fmt: skip
    """(status, seconds, Retry-After) of one read; status 0 = timed out, -1 = cut."""
    _, method, path, data = read
    t0 = time.perf_counter()
    try:
        if method == "GET":
            r = await client.get(url + path, params=data, headers=headers)
        else:
            r = await client.post(url + path, json=data, headers=headers)
    except httpx.TimeoutException:
        return 0, time.perf_counter() - t0, 0.0
    except httpx.TransportError:
        # A kept-alive connection the server closed as it was reused, or one it cut:
        # counted apart (-1), and the next try waits a second as after a refusal.
        return -1, time.perf_counter() - t0, 1.0
    return r.status_code, time.perf_counter() - t0, float(r.headers.get("retry-after", "0"))


def _storm_process(
    url: str, readers: int, address: str, seconds: float, mix: str, nice: int, apart: bool,
    out: Any,
) -> None:  # fmt: skip
    # The readers share this machine's cores with the service: niced, they stand for
    # clients on other machines (--readers-nice), not for load on the service's host.
    os.nice(nice)
    _own_session(apart)

    async def main() -> dict[str, list[tuple[int, float]]]:
        results: dict[str, list[tuple[int, float]]] = defaultdict(list)
        reads = _reads(datetime.now(UTC).replace(second=0, microsecond=0), mix)
        headers = {"X-Forwarded-For": address} if address else {}
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=readers + 4)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def loop(i: int) -> None:
                n = i
                while time.monotonic() < deadline:
                    read = reads[n % len(reads)]
                    n += 1
                    status, took, retry = await _read(client, url, read, headers)
                    results[read[0]].append((status, took))
                    if retry:
                        await asyncio.sleep(retry)

            await asyncio.gather(*(loop(i) for i in range(readers)))
        return dict(results)

    results = asyncio.run(main())
    # This reader process's own CPU: it shares the machine's cores with the service.
    out.put((results, time.process_time()))


async def _cheap(client: httpx.AsyncClient, url: str, seconds: float) -> list[float]:
    minute = datetime.now(UTC) - timedelta(minutes=1)
    key = f"page_view_{minute:%Y-%m-%d_%H:%M}"
    took: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/analytics/realtime", f"/analytics/minute-buckets/{key}"):
            t0 = time.perf_counter()
            r = await client.get(url + path)
            if r.status_code == 200:
                took.append(time.perf_counter() - t0)
        await asyncio.sleep(0.1)
    return took


def _own_session(apart: bool) -> None:
    # Each client its own session (autogroup), as clients on other machines: in the
    # bench's, the readers took the ingest client's CPU share (its latencies at the
    # steady rate were its own wait for a core).
    if apart:
        os.setsid()


def _cheap_process(url: str, seconds: float, apart: bool, out: Any) -> None:
    # A process of its own: on the bench's loop, beside the full-speed ingest client (8
    # connections as fast as they go), a cheap read's time was mostly that loop's lag.
    _own_session(apart)

    async def main() -> list[float]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await _cheap(client, url, seconds)

    out.put(asyncio.run(main()))


def _own_cpu() -> tuple[float, float]:
    """This process's CPU seconds and seconds its threads waited for a core (schedstat)."""
    waited = 0.0
    for task in Path("/proc/self/task").glob("*/schedstat"):
        with contextlib.suppress(FileNotFoundError, IndexError):
            waited += int(task.read_text().split()[1]) / 1e9
    return time.process_time(), waited


async def _ingest(
    client: httpx.AsyncClient, url: str, seconds: float, rate: float, tag: str, minute: datetime,
    raw: bool = False,
) -> tuple[list[float], Counter[int], int]:  # fmt: skip
    """Single events for ``seconds``: ``rate`` per second offered (open loop, each on time
    whatever the answers), or as fast as 8 connections go (``rate`` 0; ``raw``: each
    request written on the socket by hand, not by httpx). Returns the latencies, the
    statuses and the number offered."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def one(n: int) -> None:
        t0 = time.perf_counter()
        try:
            r = await client.post(f"{url}/events", json=_event(minute, f"{tag}-{n}", LIVE_PAGE))
            statuses[r.status_code] += 1
        except httpx.HTTPError:
            statuses[0] += 1
        latencies.append(time.perf_counter() - t0)

    start = time.monotonic()
    if rate:
        tasks = []
        n = 0
        while time.monotonic() - start < seconds:
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
        return latencies, statuses, n
    counter = iter(range(10**9))

    async def closed() -> None:
        while time.monotonic() - start < seconds:
            await one(next(counter))

    async def lean() -> None:
        # One kept-alive connection written and read by hand: httpx costs this process
        # ~2 ms of CPU per event, more than the API worker and the engine together, and
        # at full speed the bench's one core was the limit of "ingest alone".
        url_ = httpx.URL(url)
        reader, writer = await asyncio.open_connection(url_.host, url_.port)
        try:
            while time.monotonic() - start < seconds:
                n = next(counter)
                body = json.dumps(_event(minute, f"{tag}-{n}", LIVE_PAGE)).encode()
                t0 = time.perf_counter()
                writer.write(b"POST /events HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))  # fmt: skip
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = dict(h.split(": ", 1) for h in lines[1:] if ": " in h)
                size = int({k.lower(): v for k, v in fields.items()}["content-length"])
                await reader.readexactly(size)
                statuses[int(lines[0].split()[1])] += 1
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    await asyncio.gather(*((lean if raw else closed)() for _ in range(8)))
    return latencies, statuses, len(latencies)


def _cpu(root: int) -> dict[str, float]:
    """CPU seconds so far of serve and its descendants, by group."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = defaultdict(list)
    for line in out.stdout.splitlines():
        pid, ppid = (int(x) for x in line.split())
        children[ppid].append(pid)
    groups: Counter[str] = Counter()
    stack = [root]
    while stack:
        pid = stack.pop()
        stack += children[pid]
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        except FileNotFoundError:
            continue
        group = ("query" if b"query-server" in cmd else "engine" if b"valkey" in cmd
                 else "archiver" if b"archiver" in cmd else "api")  # fmt: skip
        groups[group] += (int(fields[11]) + int(fields[12])) / 100  # utime + stime, ticks
        # Time its threads were runnable but waited for a core (schedstat's run delay):
        # how much of a process's latency is the machine's CPU, not its own work.
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                groups[f"{group} waiting"] += int(task.read_text().split()[1]) / 1e9
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return dict(groups)


async def _loop_lag(client: httpx.AsyncClient, url: str) -> dict[tuple[str, str], float]:
    """The event-loop lag histograms' cumulative counts, by (role, le)."""
    text = (await client.get(f"{url}/metrics")).text
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("ea_event_loop_lag_seconds_bucket{"):
            labels, _, value = line.rpartition(" ")
            fields = dict(f.split("=", 1) for f in labels[labels.index("{") + 1 : -1].split(","))
            out[fields["role"].strip('"'), fields["le"].strip('"')] = float(value)
    return out


def _late(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float],
          role: str, over: str) -> str:  # fmt: skip
    """Share of the role's loop samples in the phase later than ``over`` seconds."""
    total = after.get((role, "+Inf"), 0) - before.get((role, "+Inf"), 0)
    within = after.get((role, over), 0) - before.get((role, over), 0)
    return f"{(total - within) / total:.1%}" if total else "-"


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else float("nan")
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def _phase(
    client: httpx.AsyncClient, url: str, args: argparse.Namespace, rate: float, storm: bool,
    tag: str, root: int,
) -> dict[str, Any]:  # fmt: skip
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    queues: list[Any] = []
    procs = []
    if storm:
        for address in ("", "10.23.0.2"):
            q: Any = multiprocessing.Queue()
            p = multiprocessing.Process(
                target=_storm_process,
                args=(
                    url,
                    args.readers,
                    address,
                    args.seconds + 2,
                    args.mix,
                    args.readers_nice,
                    not args.same_session,
                    q,
                ),
            )
            p.start()  # fmt: skip
            queues.append(q)
            procs.append(p)
        await asyncio.sleep(1)  # under way
    cheap_out: Any = multiprocessing.Queue()
    cheap = multiprocessing.Process(
        target=_cheap_process, args=(url, args.seconds, not args.same_session, cheap_out)
    )
    cheap.start()
    cpu0 = _cpu(root)
    own0 = _own_cpu()
    lag0 = await _loop_lag(client, url)
    lat, st, offered = await _ingest(
        client, url, args.seconds, rate, tag, minute, args.client == "raw"
    )
    lag1 = await _loop_lag(client, url)
    own1 = _own_cpu()
    cpu1 = _cpu(root)
    cheap_took = cheap_out.get(timeout=180)
    cheap.join(timeout=60)
    reads: dict[str, list[tuple[int, float]]] = defaultdict(list)
    readers_cpu = 0.0
    for q, p in zip(queues, procs, strict=True):
        results, cpu = q.get(timeout=180)
        readers_cpu += cpu
        for kind, rows in results.items():
            reads[kind] += rows
        p.join(timeout=60)
    return {
        "offered": offered, "statuses": st, "latencies": lat, "cheap": cheap_took,
        "reads": reads, "cpu": {g: cpu1.get(g, 0) - cpu0.get(g, 0) for g in cpu1},
        "readers_cpu": readers_cpu,
        "client": (own1[0] - own0[0], own1[1] - own0[1]),
        "minute": minute,
        "lag": {role: (_late(lag0, lag1, role, "0.025"), _late(lag0, lag1, role, "0.1"))
                for role in ("ingest", "query")},
    }  # fmt: skip


def _report(name: str, ph: dict[str, Any], seconds: float) -> None:
    lat = ph["latencies"]
    cpu = " ".join(f"{g} {s:.1f}s" for g, s in sorted(ph["cpu"].items()))
    cpu += f"; the bench's ingest client {ph['client'][0]:.1f}s waiting {ph['client'][1]:.1f}s"
    if ph["readers_cpu"]:
        cpu += f", its readers {ph['readers_cpu']:.1f}s"
    print(f"  {name:24} offered {ph['offered']:6} answered {dict(ph['statuses'])} "
          f"{len(lat) / seconds:7.1f}/s  p50 {_pct(lat, 50):7.1f} ms  p99 {_pct(lat, 99):7.1f} ms"
          f"  cheap reads p99 {_pct(ph['cheap'], 99):6.1f} ms  CPU {cpu}")  # fmt: skip
    lag = "; ".join(f"{role} {a} > 25 ms, {b} > 100 ms" for role, (a, b) in ph["lag"].items())
    print(f"      event-loop samples late: {lag}")
    for kind, rows in sorted(ph["reads"].items()):
        codes = Counter(s for s, _ in rows)
        ok = [t for s, t in rows if s == 200]
        print(f"      {kind:22} {dict(codes)}  200s p50 {_pct(ok, 50):7.0f} ms "
              f"p99 {_pct(ok, 99):7.0f} ms")  # fmt: skip


async def _run(url: str, args: argparse.Namespace, root: int) -> bool:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        start = now - timedelta(minutes=args.minutes)
        events = [
            _event(start + timedelta(minutes=m, seconds=1), f"seed-{m}-{p}", f"https://ex.com/p{p}")
            for m in range(args.minutes) for p in range(args.pages)
        ]  # fmt: skip
        for i in range(0, len(events), 1000):
            r = await client.post(f"{url}/events/batch", json={"events": events[i : i + 1000]})
            r.raise_for_status()
        for _ in range(600):  # the archiver catches up first (it would share the CPU)
            stats = (await client.get(f"{url}/persistent/status")).json()["stats"]
            if stats["stream_length"] == 0 or stats["pending_messages"] == 0:
                break
            await asyncio.sleep(0.5)
        ok = True
        sent = 0
        phases = []
        rates = ((args.rate, f"steady {args.rate:g}/s"), (0.0, "full speed"))
        for rate, label in rates[1:] if args.full_speed_only else rates:
            for storm in (False, True):
                ph = await _phase(client, url, args, rate, storm, f"{label}-{storm}", root)
                phases.append((f"{label}{' + storm' if storm else ''}", ph))
                sent += ph["offered"]
                ok &= ph["statuses"][201] == ph["offered"]
        for name, ph in phases:
            _report(name, ph, args.seconds)
        counted = 0
        for minute in sorted({ph["minute"] for _, ph in phases}):
            r = await client.get(f"{url}/analytics/timeseries", params={
                "from": _iso(minute), "to": _iso(minute + timedelta(minutes=1)),
                "page_url": LIVE_PAGE}, timeout=120)  # fmt: skip
            counted += r.json()["total"]["count"]
        print(f"  every offered event acknowledged 201 and counted: {ok and counted == sent} "
              f"({counted} counted of {sent} offered)")  # fmt: skip
        for _, label in rates[1:] if args.full_speed_only else rates:
            alone = dict(phases)[label]
            during = dict(phases)[f"{label} + storm"]
            p99a, p99b = _pct(alone["latencies"], 99), _pct(during["latencies"], 99)
            tput = len(during["latencies"]) / max(1, len(alone["latencies"]))
            print(f"  {label}: p99 {p99a:.1f} -> {p99b:.1f} ms "
                  f"(target <= {max(3 * p99a, 50):.1f}: {p99b <= max(3 * p99a, 50)}), "
                  f"throughput during/alone {tput:.0%} (target >= 80%: {tput >= 0.8})")  # fmt: skip
        return ok and counted == sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--readers", type=int, default=50, help="per address (two addresses)")
    parser.add_argument("--rate", type=float, default=50, help="steady ingest, events/s")
    parser.add_argument("--minutes", type=int, default=120)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--query-workers", default="0,1", help="settings to compare")
    parser.add_argument("--mix", choices=["all", "counter", "archive"], default="all",
                        help="the storm's reads: all, only the counter reads, only the "
                        "archive queries")  # fmt: skip
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="the full-speed ingest client: requests written by hand on 8 "
                        "connections (raw), or httpx as before")  # fmt: skip
    parser.add_argument("--same-session", action="store_true",
                        help="serve and the bench's clients in one session (as before); by "
                        "default serve, the readers and the cheap reads' client each have "
                        "a session of their own, as a service and remote clients do")  # fmt: skip
    parser.add_argument("--full-speed-only", action="store_true",
                        help="skip the steady rate's phases")  # fmt: skip
    parser.add_argument("--readers-nice", type=int, default=0,
                        help="niceness of the storm's reader processes (0-19)")  # fmt: skip
    args = parser.parse_args()
    ok = True
    for setting in args.query_workers.split(","):
        with served(["--query-workers", setting], not args.same_session) as (url, _, proc):
            print(f"--query-workers {setting}: {args.pages} pages x {args.minutes} minutes, "
                  f"2 x {args.readers} readers ({args.mix} reads, nice {args.readers_nice}), "
                  f"{args.seconds:g} s a phase")  # fmt: skip
            ok &= asyncio.run(_run(url, args, proc.pid))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
