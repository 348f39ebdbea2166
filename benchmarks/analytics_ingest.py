"""Ingest at full speed while the archive analytics run over HTTP (issue 16), for
``analytics_bench.py --ingest-seconds N``.

Per round: the real service (``serve``, embedded engine, its archiver) on a fresh data
dir whose archive is a hard-linked copy of the bench's (the generated hours are never
appended to: the archiver writes only the current hour, and compaction renames new
files in); single-event ingest by ``--writers`` clients for N s alone, then N s again
while a process of its own (as other machines' clients would be: in this one, their
event loop would delay the ingest clients' and be measured) posts the three questions
to ``/analytics/funnel|retention|query`` in a loop, as many at once as the pool allows.
Rounds alternate the DuckDB thread settings given (A/B interleaved, the order flipped
every round) so a shared machine's load drifts over both alike.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from bench import ENV, wait_http
from procs import free_port, stop_group
from read_storm import _ingest, _pct

PATHS = {
    "funnel": "/analytics/funnel",
    "retention": "/analytics/retention",
    "query": "/analytics/query",
}


def _query_process(
    url: str, bodies: dict[str, tuple[str, dict[str, Any]]], clients: int, seconds: float,
    out: Any,
) -> None:  # fmt: skip
    """``clients`` loops posting the questions in turn for ``seconds``; puts the latencies
    of the 200s by question and the statuses by question."""

    async def main() -> tuple[dict[str, list[float]], dict[str, dict[int, int]]]:
        lat: dict[str, list[float]] = defaultdict(list)
        statuses: dict[str, Counter[int]] = defaultdict(Counter)
        names = list(bodies)
        deadline = time.monotonic() + seconds

        async def loop(c: int, client: httpx.AsyncClient) -> None:
            i = c
            while time.monotonic() < deadline:
                name = names[i % len(names)]
                kind, body = bodies[name]
                t0 = time.perf_counter()
                r = await client.post(f"{url}{PATHS[kind]}", json=body)
                if r.status_code == 200:
                    lat[name].append(time.perf_counter() - t0)
                statuses[name][r.status_code] += 1
                if r.status_code in (429, 503):  # as told, not a tight loop of refusals
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                i += 1

        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*(loop(c, client) for c in range(clients)))
        return dict(lat), {k: dict(v) for k, v in statuses.items()}

    out.put(asyncio.run(main()))


async def _counted(client: httpx.AsyncClient, url: str, minute: datetime) -> int:
    r = await client.get(f"{url}/analytics/timeseries", params={
        "from": minute.isoformat(), "to": (minute + timedelta(minutes=1)).isoformat(),
        "page_url": "https://ex.com/live"})  # fmt: skip
    r.raise_for_status()
    count: int = r.json()["total"]["count"]
    return count


async def _round(
    url: str, bodies: dict[str, tuple[str, dict[str, Any]]], seconds: float, writers: int,
    clients: int,
) -> dict[str, Any]:  # fmt: skip
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    limits = httpx.Limits(max_connections=writers + 4)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        for name, (kind, body) in bodies.items():  # warm, and each question answers
            r = await client.post(f"{url}{PATHS[kind]}", json=body, timeout=120)
            if r.status_code != 200:
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")
        alone, s_alone = await _ingest(client, url, seconds, writers, minute, "a")
        out: multiprocessing.Queue[Any] = multiprocessing.Queue()
        storm = multiprocessing.Process(
            target=_query_process, args=(url, bodies, clients, seconds + 2, out)
        )
        storm.start()
        await asyncio.sleep(1)  # the queries under way
        loaded, s_loaded = await _ingest(client, url, seconds, writers, minute, "b")
        q_lat, q_status = out.get(timeout=300)
        storm.join(timeout=60)
        counted = await _counted(client, url, minute)
    sent = len(alone) + len(loaded)
    return {
        "alone": alone, "loaded": loaded, "queries": q_lat, "query_statuses": q_status,
        "sent": sent, "acked_new": s_alone[201] + s_loaded[201], "counted": counted,
    }  # fmt: skip


def _serve_round(
    archive: Path, threads: int, bodies: dict[str, tuple[str, dict[str, Any]]],
    args: Any,
) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ea-anaingest-") as tmp:
        copy = Path(tmp) / "archive"
        shutil.copytree(archive, copy, copy_function=os.link)
        port = free_port()
        env = {**ENV, "EA_ARCHIVE_DIR": str(copy), "EA_ANALYTICS_THREADS": str(threads),
               "EA_ANALYTICS_TIMEOUT_S": "120"}  # fmt: skip
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "event_analytics", "serve", "--port", str(port),
             "--data-dir", str(Path(tmp) / "data")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health/ready", timeout_s=90)
            return asyncio.run(_round(url, bodies, args.ingest_seconds, args.writers,
                                      args.query_clients))  # fmt: skip
        finally:
            stop_group(proc)
            log.close()


def _p(values: list[float], q: float) -> float:
    """Percentile in ms, nearest rank (query samples are few)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] * 1000


def run(archive: Path, bodies: dict[str, tuple[str, dict[str, Any]]], args: Any) -> dict[str, Any]:
    """Rounds over ``args.service_threads`` interleaved; per setting, the rounds'
    samples pooled and their p99 ratios each (the spread says how far to trust one)."""
    settings: list[int] = args.service_threads
    by: dict[int, dict[str, Any]] = {
        t: {"alone": [], "loaded": [], "queries": defaultdict(list), "ratios": [],
            "statuses": defaultdict(Counter), "ok": True, "sent": 0, "counted": 0}
        for t in settings
    }  # fmt: skip
    for i in range(args.ingest_rounds):
        order = settings if i % 2 == 0 else settings[::-1]
        for t in order:
            load = os.getloadavg()
            r = _serve_round(archive, t, bodies, args)
            b = by[t]
            b["alone"] += r["alone"]
            b["loaded"] += r["loaded"]
            for name, lat in r["queries"].items():
                b["queries"][name] += lat
            for name, st in r["query_statuses"].items():
                b["statuses"][name].update(st)
            ratio = _pct(r["loaded"], 99) / _pct(r["alone"], 99)
            b["ratios"].append(ratio)
            ok = r["acked_new"] == r["sent"] == r["counted"]
            b["ok"] = b["ok"] and ok
            b["sent"] += r["sent"]
            b["counted"] += r["counted"]
            print(f"round {i + 1} threads {t}: ingest p99 alone {_pct(r['alone'], 99):.1f} ms, "
                  f"under queries {_pct(r['loaded'], 99):.1f} ms (x{ratio:.2f}); "
                  f"{sum(len(v) for v in r['queries'].values())} queries; counted "
                  f"{r['counted']} of {r['sent']} sent ({ok}); load avg before "
                  f"{load[0]:.2f} {load[1]:.2f}", flush=True)  # fmt: skip
    out: dict[str, Any] = {}
    for t, b in by.items():
        out[str(t)] = {
            "ingest_alone": {"events": len(b["alone"]), "p50_ms": _pct(b["alone"], 50),
                             "p99_ms": _pct(b["alone"], 99)},
            "ingest_under_queries": {"events": len(b["loaded"]), "p50_ms": _pct(b["loaded"], 50),
                                     "p99_ms": _pct(b["loaded"], 99)},
            "p99_ratio_pooled": _pct(b["loaded"], 99) / _pct(b["alone"], 99),
            "p99_ratio_rounds": b["ratios"],
            "p99_ratio_median": statistics.median(b["ratios"]),
            "queries": {n: {"runs": len(v), "p50_ms": _p(v, 50), "p95_ms": _p(v, 95)}
                        for n, v in b["queries"].items()},
            "query_statuses": {n: dict(s) for n, s in b["statuses"].items()},
            "every_event_counted": b["ok"], "sent": b["sent"], "counted": b["counted"],
        }  # fmt: skip
    return out
