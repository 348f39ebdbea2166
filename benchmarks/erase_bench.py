"""The erasure's file pass, before and after the pre-pass (archive/holders.py), in one run.

An archive of HOURS hour files and EVENTS events (records of the codec, spread over
many users), some users each in a few hours only. Each round erases one of those users
two ways, alternating: "every file" (the loop before the pre-pass: ``erase_hour``, which
reads and tests every line, on every hour file) and "pre-pass" (``erase.erase``: only
the hours the pre-pass finds are read). Both remove the same events (checked). Run with
and without Parquet copies of the hours (``--copies``).

    .venv/bin/python -m benchmarks.erase_bench [--hours 200] [--events 1000000] [--copies]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from event_analytics.archive import compact, erase, files, record


def build(root: Path, hours: int, events: int, rounds: int) -> list[str]:
    """The archive; the users to erase (each in 3 hours, 5 events per hour)."""
    rng = random.Random(7)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    per_hour = events // hours
    targets = [f"erase-me-{n}" for n in range(rounds * 2)]
    spots = {t: rng.sample(range(hours), 3) for t in targets}
    for h in range(hours):
        start = first + timedelta(hours=h)
        users = [f"user-{rng.randrange(50_000)}" for _ in range(per_hour)]
        here = [t for t, where in spots.items() if h in where]
        slots = rng.sample(range(per_hour), 5 * len(here))
        for n, t in enumerate(here):
            for slot in slots[5 * n : 5 * n + 5]:
                users[slot] = t
        lines = []
        for n, user in enumerate(users):
            rec = record.Record(
                event_id=uuid.UUID(int=rng.getrandbits(128)),
                user_id=user,
                timestamp=start + timedelta(seconds=n * 3600 // per_hour),
                event_type="page_view",
                payload={"page_url": f"https://shop.example/p/{rng.randrange(500)}",
                         "referrer": "https://search.example/", "device": "desktop"},
                received_at=start + timedelta(seconds=n * 3600 // per_hour),
            )  # fmt: skip
            lines.append(record.encode(rec) + b"\n")
        path = files.hour_path(root, start)
        with files.locked(path) as fd:
            files.append(fd, b"".join(lines))
    return targets


def every_file(root: Path, user: str) -> int:
    """The erasure's file pass before the pre-pass: every hour file read line by line."""
    removed = 0
    for found in files.list_files(root):
        done = erase.erase_hour(found.path, [user], found.relative, found.hour, lambda _p: None)
        if done is not None:
            removed += done.removed
            if compact.parquet_path(found.path).exists():
                erase.refresh_copy(found.path)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=int, default=200)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", action="store_true", help="Parquet copies of every hour")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="erase-bench-"))
    try:
        root = work / "archive"
        t0 = time.perf_counter()
        targets = build(root, args.hours, args.events, args.rounds)
        if args.copies:
            for found in files.list_files(root):
                compact.compact(found.path)
        size = sum(f.size_bytes for f in files.list_files(root))
        print(f"archive: {args.hours} hours, {args.events} events, {size / 1e6:.0f} MB, "
              f"copies: {args.copies}; built in {time.perf_counter() - t0:.0f} s")  # fmt: skip
        times: dict[str, list[float]] = {"every file": [], "pre-pass": []}
        for n in range(args.rounds):
            for name, user in (("every file", targets[2 * n]), ("pre-pass", targets[2 * n + 1])):
                t = time.perf_counter()
                if name == "every file":
                    removed = every_file(root, user)
                else:
                    report = erase.erase(root, [user], crash=lambda _p: None)
                    removed = report.removed
                    assert report.files_read <= 3, report.files_read
                times[name].append(time.perf_counter() - t)
                assert removed == 15, (name, removed)  # 5 events in each of 3 hours
        load = os.getloadavg()[0]
        for name, got in times.items():
            print(f"{name:>10}: " + " ".join(f"{s:.2f}" for s in got) + " s")
        best = {name: min(got) for name, got in times.items()}
        print(f"ratio every-file / pre-pass (best of {args.rounds}): "
              f"{best['every file'] / best['pre-pass']:.1f}x; load average {load:.1f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
