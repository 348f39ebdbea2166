"""Export: raw events of a range out of the archive, checked against what was written/sent.

The archive is written with the record codec (as the archiver writes it), or by the real
service from events sent over HTTP; every export is parsed back and compared with that
model, and its manifest is recomputed independently from the output.
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_analytics.archive import files, record
from event_analytics.archive.export import CSV_COLUMNS
from tests.helpers import event
from tests.servers import HTTP, ServiceProcess, stopped_after

T0 = datetime(2026, 11, 27, 8, tzinfo=UTC)
SITES = ("a.example", "b.example")


def write(root: Path, records: list[record.Record]) -> None:
    """Append each record to its hour file, as the archiver does."""
    for rec in records:
        path = files.hour_path(root, rec.timestamp.replace(minute=0, second=0, microsecond=0))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(record.encode(rec) + b"\n")


def make(minute: int, n: int, tracker: bool = False) -> record.Record:
    site = SITES[n % 2]
    payload: dict[str, Any] = {"page_url": f"https://{site}/p{n % 5}?q=1", "country": "DE"}
    if tracker:
        # The browser tracker names the site itself; its page may be elsewhere.
        payload = {"page_url": f"https://cdn.example/p{n}", "domain": site, "browser": "Firefox"}
    ts = T0 + timedelta(minutes=minute, seconds=n % 60)
    return record.Record(uuid.uuid4(), f"u{n % 7}", ts, "page_view", payload, ts)


def wanted(
    records: list[record.Record], start: datetime, end: datetime, site: str | None
) -> list[record.Record]:
    """The model: the records of [start, end) on ``site``, hour by hour in file order."""
    picked = [
        r
        for r in records
        if start <= r.timestamp < end
        and (site is None or site in (r.payload.get("domain"), _host(r.payload["page_url"])))
    ]
    return sorted(picked, key=lambda r: r.timestamp.replace(minute=0, second=0))


def _host(url: str) -> str:
    return url.split("/")[2]


def run_export(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "event_analytics", "export", "--archive-dir", str(root), *args],
        capture_output=True, timeout=120,
    )  # fmt: skip


def check_manifest(manifest: dict[str, Any], body: bytes, fmt: str, ids_by_hour: Any) -> None:
    """Recompute the manifest from the output alone: counts, id checksums, byte hashes."""
    assert manifest["totals"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["totals"]["bytes"] == len(body)
    assert {h["hour"]: h["events"] for h in manifest["hours"]} == {
        hour: len(ids) for hour, ids in ids_by_hour.items()
    }
    for h in manifest["hours"]:
        total = sum(
            int.from_bytes(hashlib.md5(i.encode()).digest()[:8], "big", signed=True)
            for i in ids_by_hour[h["hour"]]
        )
        assert h["ids_checksum"] == f"{total % 2**64:016x}"
    if fmt == "ndjson":
        # The hours' bytes follow each other in the output: each hash covers its part.
        lines = body.splitlines(keepends=True)
        at = 0
        for h in manifest["hours"]:
            part = b"".join(lines[at : at + h["events"]])
            assert h["sha256"] == hashlib.sha256(part).hexdigest()
            at += h["events"]
        assert at == len(lines)


def parse(body: bytes, fmt: str, path: Path | None = None) -> list[dict[str, Any]]:
    """The exported events as records' fields (event_id, user_id, timestamp, ...)."""
    if fmt == "ndjson":
        return [orjson.loads(line) for line in body.splitlines()]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert rows == [] or list(rows[0]) == list(CSV_COLUMNS)
        return [
            {
                "event_id": r["event_id"],
                "user_id": r["user_id"],
                "timestamp": r["timestamp"],
                "event_type": r["event_type"],
                "payload": orjson.loads(r["payload"]),
                "received_at": r["received_at"] or None,
            }
            for r in rows
        ]
    assert path is not None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rows = con.execute(
        "SELECT event_id, user_id, strftime(timestamp, '%Y-%m-%dT%H:%M:%SZ'), event_type, "
        "payload::VARCHAR, strftime(received_at, '%Y-%m-%dT%H:%M:%SZ') FROM read_parquet(?)",
        [str(path)],
    ).fetchall()
    return [
        {
            "event_id": r[0],
            "user_id": r[1],
            "timestamp": r[2],
            "event_type": r[3],
            "payload": orjson.loads(r[4]),
            "received_at": r[5],
        }
        for r in rows
    ]


def as_fields(rec: record.Record) -> dict[str, Any]:
    return orjson.loads(record.encode(rec))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    minutes=st.lists(st.integers(0, 5 * 60), min_size=0, max_size=40),
    window=st.tuples(st.integers(-30, 300), st.integers(1, 400)),
    site=st.sampled_from([None, *SITES]),
    fmt=st.sampled_from(["ndjson", "csv", "parquet"]),
)
def test_export_is_the_model_and_its_manifest_checks_out(
    tmp_path_factory: pytest.TempPathFactory,
    minutes: list[int],
    window: tuple[int, int],
    site: str | None,
    fmt: str,
) -> None:
    tmp = tmp_path_factory.mktemp("export")
    root = tmp / "archive"
    records = [make(m, n, tracker=n % 3 == 0) for n, m in enumerate(minutes)]
    write(root, records)
    start = T0 + timedelta(minutes=window[0])
    end = start + timedelta(minutes=window[1])
    out = tmp / f"out.{fmt}"
    args = ["--from", start.isoformat(), "--to", end.isoformat(), "--format", fmt]
    args += ["--output", str(out)] + (["--site", site] if site else [])
    done = run_export(root, *args)
    assert done.returncode == 0, done.stderr
    body = out.read_bytes()
    got = parse(body, fmt, out)
    want = wanted(records, start, end, site)
    # Within an hour the order is the file's; hours oldest first.
    assert got == [as_fields(r) for r in want]
    manifest = orjson.loads(out.with_name(out.name + ".manifest.json").read_bytes())
    ids_by_hour: dict[str, list[str]] = defaultdict(list)
    for r in want:
        hour = r.timestamp.replace(minute=0, second=0, microsecond=0)
        ids_by_hour[hour.strftime("%Y-%m-%dT%H:%M:%SZ")].append(str(r.event_id))
    check_manifest(manifest, body, fmt, ids_by_hour)
    assert manifest["totals"]["events"] == len(want)


def test_stdout_export_equals_the_file_export_and_skips_unreadable_lines(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    records = [make(m, m) for m in range(0, 180, 3)]
    write(root, records)
    with files.hour_path(root, T0).open("ab") as out:
        out.write(b'{"event_id":"not a record"}\n')
    piped = run_export(root, "--from", "2026-11-27", "--to", "2026-11-28")
    assert piped.returncode == 0, piped.stderr
    assert parse(piped.stdout, "ndjson") == [as_fields(r) for r in records]
    assert b"1 unreadable lines skipped" in piped.stderr
    assert run_export(root, "--from", "2026-11-27", "--to", "2026-11-28", "--output",
                      str(tmp_path / "o.ndjson")).returncode == 0  # fmt: skip
    assert (tmp_path / "o.ndjson").read_bytes() == piped.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "--from is required"),
        (["--from", "2026-11-27"], "--to is required"),
        (["--from", "yesterday", "--to", "2026-11-28"], "is not an ISO 8601"),
        (["--from", "2026-11-28", "--to", "2026-11-27"], "--to must be later than --from"),
        (["--from", "2026-11-27", "--to", "2026-11-28", "--format", "xml"], "--format must be"),
        (["--from", "2026-11-27", "--to", "2026-11-28", "--site", " "], "--site must not"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    done = run_export(tmp_path, *args)
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and says in lines[0] and lines[0].startswith("event-analytics export: ")
    assert done.stdout == b""


def _peak_rss_kib(root: Path, start: str, end: str, fmt: str) -> int:
    """Peak RSS of an export to /dev/null, measured in a child of a child (its own
    RUSAGE_CHILDREN, untouched by this test process's other children)."""
    probe = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    cmd = [sys.executable, "-c", probe, sys.executable, "-m", "event_analytics", "export",
           "--archive-dir", str(root), "--from", start, "--to", end, "--format", fmt]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_memory_stays_flat_over_a_large_archive(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "archive"
    pad = "x" * 600
    for hour in range(4):
        path = files.hour_path(root, T0 + timedelta(hours=hour))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            for n in range(40_000):
                ts = T0 + timedelta(hours=hour, seconds=n % 3600)
                rec = record.Record(uuid.uuid4(), f"u{n}", ts, "page_view",
                                    {"page_url": "https://a.example/", "pad": pad}, ts)  # fmt: skip
                out.write(record.encode(rec) + b"\n")
    size_kib = sum(f.size_bytes for f in files.list_files(root)) // 1024
    assert size_kib > 100_000  # ~110 MB of events: more than the bound below by far
    empty = _peak_rss_kib(root, "2020-01-01", "2020-01-02", fmt)  # the same process, no events
    full = _peak_rss_kib(root, "2026-11-27", "2026-11-28", fmt)
    # Hour by hour in 64 KiB chunks: a few MB over the idle process, never the archive.
    assert full - empty < 40_000, (full, empty, size_kib)


@pytest.mark.slow
def test_http_export_streams_what_was_sent_with_its_manifest(tmp_path: Path) -> None:
    key = "k" * 24
    env = {"EA_READ_KEYS": key}
    now = datetime.now(UTC).replace(microsecond=0)
    sent = [event(user=f"u{n % 3}", ts=now - timedelta(minutes=n * 7),
                  url=f"https://{SITES[n % 2]}/p{n}") for n in range(40)]  # fmt: skip
    with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
        r = httpx.post(f"{svc.url}/events/batch", json={"events": sent}, timeout=30)
        assert r.status_code == 200, r.text
        assert all(x["status"] == "accepted" for x in r.json()["results"]), r.text
        wait_archived_with_key(svc.url, key)
        auth = {"Authorization": f"Bearer {key}"}
        frm = (now - timedelta(hours=6)).isoformat()
        params = {"from": frm, "to": (now + timedelta(minutes=1)).isoformat(), "site": SITES[0]}
        assert httpx.get(f"{svc.url}/api/export", params=params).status_code == 401
        with httpx.stream("GET", f"{svc.url}/api/export", params=params, headers=auth) as got:
            assert got.status_code == 200
            assert got.headers["content-type"].startswith("application/x-ndjson")
            body = got.read()
        rows = parse(body, "ndjson")
        want = {e["event_id"] for n, e in enumerate(sent) if n % 2 == 0}
        assert sorted(r["event_id"] for r in rows) == sorted(want)
        by_id = {e["event_id"]: e for e in sent}
        for row in rows:
            assert row["user_id"] == by_id[row["event_id"]]["user_id"]
            assert row["payload"]["page_url"] == by_id[row["event_id"]]["payload"]["page_url"]
        manifest = httpx.get(
            f"{svc.url}/api/export/manifest", params=params, headers=auth, timeout=30
        ).json()
        ids_by_hour: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            ids_by_hour[row["timestamp"][:13] + ":00:00Z"].append(row["event_id"])
        check_manifest(manifest, body, "ndjson", ids_by_hour)
        csv_body = httpx.get(f"{svc.url}/api/export", params={**params, "format": "csv"},
                             headers=auth, timeout=30).content  # fmt: skip
        assert parse(csv_body, "csv") == rows
        for bad, field in (
            ({"to": params["to"]}, "from"),
            ({**params, "from": "soon"}, "from"),
            ({**params, "to": frm}, "to"),
            ({**params, "format": "parquet"}, "format"),
            ({**params, "site": "s" * 300}, "site"),
        ):
            r = httpx.get(f"{svc.url}/api/export", params=bad, headers=auth, timeout=30)
            assert r.status_code == 422, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["errors"][0]["field"] == field
            assert "{" not in r.json()["detail"]


def wait_archived_with_key(url: str, key: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    auth = {"Authorization": f"Bearer {key}"}
    while True:
        stats = HTTP.get(f"{url}/persistent/status", headers=auth, timeout=5).json()["stats"]
        if stats["stream_length"] == 0 and stats["pending_messages"] == 0:
            return
        assert time.monotonic() < deadline, f"archive did not catch up: {stats}"
        time.sleep(0.1)
