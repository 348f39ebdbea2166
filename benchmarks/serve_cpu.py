"""CPU of one start -> ready -> stop of ``serve`` as the tests start it, per process kind.

    python benchmarks/serve_cpu.py --src /path/to/a/src --src /path/to/b/src --runs 5

Each run starts ``python -m event_analytics serve`` (one worker, one query process, the
archiver unless ``--no-archiver`` is passed after ``--``) on a private engine, waits for
/health/ready, stops it with SIGTERM and waits for its end. The whole tree's CPU is what
this process's reaped children used (RUSAGE_CHILDREN: every process of the tree is reaped
by its parent); the CPU of each process kind is read from /proc at ready ("(stop)" is the
rest: what the tree used from ready to its end). Source trees given with ``--src`` are
alternated run by run (A/B in one run); the medians are printed with the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from procs import EngineProcess, free_port

from event_analytics.store.embedded import find_server_binary

TICK = os.sysconf("SC_CLK_TCK")
KINDS = ("query-server", "archiver", "forget-worker", "expire", "deliver", "serve")


def kind(cmdline: str) -> str:
    words = cmdline.split()
    if "spawn_main" in cmdline:
        return "spawned worker"
    if "valkey" in cmdline or "redis-server" in cmdline:
        return "engine"
    return next((k for k in KINDS if k in words), "other")


def tree(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (command line, CPU seconds) of ``root`` and its descendants."""
    procs: dict[int, tuple[str, float]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry))
        procs[int(entry)] = (cmd, (int(stat[11]) + int(stat[12])) / TICK)
    found: dict[int, tuple[str, float]] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in procs:
            found[pid] = procs[pid]
        stack.extend(children.get(pid, []))
    return found


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one(src: str, engine_url: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "EA_REDIS_URL")}
    env |= {"PYTHONPATH": src, "REDIS_URL": engine_url}
    cmd = [sys.executable, "-m", "event_analytics", "serve", "--port", str(port),
           "--data-dir", str(work / f"data-{port}"), *args.serve_args]  # fmt: skip
    before = children_cpu()
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while True:
        assert proc.poll() is None, f"serve exited with {proc.returncode}"
        assert time.monotonic() - started < 300, "serve not ready in 300 s"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    result = {"ready s": time.monotonic() - started}
    at_ready = tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)
    result["tree CPU"] = children_cpu() - before
    for cmdline, cpu in at_ready.values():
        result[kind(cmdline)] = result.get(kind(cmdline), 0.0) + cpu
    result["(stop)"] = result["tree CPU"] - sum(cpu for _, cpu in at_ready.values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", action="append", required=True, help="a source tree (A/B)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("serve_args", nargs="*", help="more flags for serve (after --)")
    args = parser.parse_args()
    print("load before:", os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="serve-cpu-") as tmp:
        work = Path(tmp)
        binary = find_server_binary()
        engine = EngineProcess(binary, work / "engine")
        engine.start()
        results: dict[str, list[dict[str, float]]] = {src: [] for src in args.src}
        try:
            for _ in range(args.runs):
                for src in args.src:
                    results[src].append(one(src, engine.url, work, args))
        finally:
            engine.stop()
    print("load after:", os.getloadavg())
    for src, runs in results.items():
        names = sorted({name for run in runs for name in run})
        medians = {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}
        print(src + ": " + "  ".join(f"{name} {value:.2f}" for name, value in medians.items()))


if __name__ == "__main__":
    main()
