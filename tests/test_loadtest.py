"""The load-test command: its pure parts, and the real CLI against the real service."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from event_analytics.loadtest.check import compare, model
from event_analytics.loadtest.send import SentEvent, percentile, plan_resends
from tests.helpers import event, seed_key
from tests.scrape import events, scrape
from tests.servers import HTTP, ServiceProcess

MINUTE = datetime(2026, 11, 27, 22, 14, tzinfo=UTC)


def loadtest(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "event_analytics", "loadtest", "--url", url, *args]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 90) == 7
    assert percentile([], 50) == 0


def test_resend_plan_is_exact_and_never_first() -> None:
    rng = random.Random(1)
    flags = plan_resends(1000, 0.1, rng)
    assert sum(flags) == 100 and not flags[0]
    assert sum(plan_resends(1, 0.5, rng)) == 0
    assert sum(plan_resends(10, 0.99, rng)) == 9


def test_model_counts_acknowledged_once_and_baseline_adds() -> None:
    later = MINUTE + timedelta(minutes=1)
    sent = [
        SentEvent("a", "u1", MINUTE, b"", stored=True),
        SentEvent("b", "u1", MINUTE, b"", stored=True),
        SentEvent("c", "u2", MINUTE, b"", stored=True),
        SentEvent("d", "u3", later, b"", stored=False),  # refused: its minute must stay empty
    ]
    expected = model(sent)
    assert {m: (c, len(u)) for m, (c, u) in expected.items()} == {MINUTE: (3, 2), later: (0, 0)}
    rows = compare(expected, {MINUTE: (10, 4)}, {MINUTE: (13, 5), later: (0, 0)})
    # Users of the earlier events may overlap with the run's: 4..6 is right, exactly 5 seen.
    assert (rows[0].expected_count, rows[0].users_low, rows[0].users_high) == (13, 4, 6)
    assert all(r.ok for r in rows)
    tampered = compare(expected, {}, {MINUTE: (4, 2), later: (0, 0)})
    assert not tampered[0].ok and tampered[1].ok


def test_loadtest_passes_and_metrics_show_its_events(live: ServiceProcess) -> None:
    before = scrape(live.url)
    args = ["--events", "300", "--concurrency", "16", "--duplicates", "0.1", "--users", "20"]
    run = subprocess.run(loadtest(live.url, *args), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout and "FAIL" not in run.stdout
    for line in ("accepted", "duplicates", "requests/s", "latency p99"):
        assert line in run.stdout
    after = scrape(live.url)
    # 300 events sent: 30 resends of acknowledged ones, so 270 new ones.
    assert events(after, "accepted") - events(before, "accepted") == 270
    assert events(after, "duplicate") - events(before, "duplicate") == 30
    assert events(after, "rejected", "_unknown") == events(before, "rejected", "_unknown")


# The load test speaks HTTP only: a single node and the cluster (whose minute counts are
# sums over shards) are enough to show that its check can fail.
@pytest.mark.parametrize("engine", ["valkey", "cluster"], indirect=True)
def test_loadtest_fails_when_another_client_adds_to_its_minute(live: ServiceProcess) -> None:
    # Slow enough (about 3 s) that one extra event lands while the run is still going.
    args = ["--events", "300", "--concurrency", "4", "--rate", "100", "--users", "20"]
    proc = subprocess.Popen(
        loadtest(live.url, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            minute = datetime.now(UTC).replace(second=0, microsecond=0)
            got = HTTP.get(f"{live.url}/analytics/minute-buckets/{seed_key(minute)}").json()
            if got["count"] > 0:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the load test sent nothing"
            time.sleep(0.05)
        # Outside the load test, into a minute it is filling: its check must notice.
        extra = event(user="intruder", ts=minute + timedelta(seconds=1))
        assert HTTP.post(f"{live.url}/events", json=extra).status_code == 201
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out + err
    assert "FAIL" in out and "MISMATCH" in out and "PASS" not in out


def test_loadtest_unreachable_service_cannot_run() -> None:
    run = subprocess.run(
        loadtest("http://127.0.0.1:9", "--events", "5"), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "cannot reach the service" in run.stderr
