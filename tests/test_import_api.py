"""``POST /api/import``: the CLI's import over HTTP, on the app in this process (its own
key prefix and keys) and a real engine; the archive read back against what was sent."""

from __future__ import annotations

import csv
import fcntl
import gc
import io
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.backends import Backend
from tests.inproc import InProcessService, in_process
from tests.readback import archive_ids
from tests.servers import ServiceProcess, stopped_after
from tests.test_import import env_for, history
from tests.test_import_parallel import (
    STOPPABLE,
    kill_worker_while,
    parent_of,
    spawned_under,
)

WRITE, READ = "import-write-key-0123456789", "import-read-key-0123456789"
NDJSON = "application/x-ndjson"


@pytest.fixture(scope="module")
def svc(engine: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """One app per engine for the module (its own key prefix, keys and archive): every
    test sends events of its own and compares the archive before and after."""
    settings = engine.settings(
        data_dir=tmp_path_factory.mktemp("import-api") / "data",
        key_prefix=f"impapi-{uuid.uuid4().hex[:8]}:", write_keys=(WRITE,), read_keys=(READ,),
        max_age_s=3600, dedup_window_s=3600, import_max_bytes=64 * 1024,
    )  # fmt: skip
    with in_process(settings, engine.env) as service:
        yield service


def post(
    svc: InProcessService, body: bytes, ctype: str, key: str | None = WRITE, **kw: str
) -> httpx.Response:
    headers = {"content-type": ctype, **kw}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return svc.http.post("/api/import", content=body, headers=headers, timeout=120)


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def test_ndjson_body_is_imported_once_with_the_clis_report(svc: InProcessService) -> None:
    events = history(40)
    body = ndjson(events) + b"{not json\n" + orjson.dumps({**events[0], "user_id": ""}) + b"\n"

    # The service freezes what it keeps once its enrichment data has loaded, beside
    # startup (api/app.py, _freeze_after): wait for that, or it can land during the import
    # (the [cluster] run saw 0 frozen objects before and 190,849 after). Every app's
    # freeze, not the first: another in-process app of this test process (the session's)
    # may have frozen already, and the count was then above 0 before this one's landed.
    def warming() -> list[InProcessService]:
        return [s for s in InProcessService.running if not s.app.state.warming.done()]

    deadline = time.monotonic() + 60
    while warming() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not warming(), "an in-process app did not finish warming up"
    collector = gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()
    assert collector[2] > 0, "the service did not freeze its objects after startup"
    r = post(svc, body, NDJSON)
    # The import's own collections (importing.rare_collections) end with it: the
    # service's process (this one) collects as before.
    # Frozen objects the request freed (a cache entry evicted) leave the frozen count,
    # so it can only fall a little: thawing the service's (0) or leaving a freeze of the
    # import's own (more than before) are what would be wrong.
    assert (gc.isenabled(), gc.get_threshold()) == collector[:2]
    assert 0 < gc.get_freeze_count() <= collector[2]
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["accepted"], report["duplicate"], report["rejected"]) == (40, 0, 2)
    assert report["rejected_by_reason"] == {"malformed_json": 1, "string_pattern_mismatch": 1}
    assert report["examples"][0].startswith("body:41: malformed_json: ")
    assert report["counted"] == 40
    got = archive_ids(svc.settings.archive_path)
    assert all(got[e["event_id"]] == 1 for e in events)
    again = post(svc, body, NDJSON).json()
    assert (again["accepted"], again["duplicate"], again["rejected"]) == (0, 40, 2)
    assert archive_ids(svc.settings.archive_path) == got


def test_segment_and_csv_by_content_type(svc: InProcessService) -> None:
    early = history(1)[0]["timestamp"]  # on a settled day: the archive path
    messages = [
        {"type": "page", "anonymousId": "a1", "messageId": str(uuid.uuid4()), "timestamp": early,
         "context": {"page": {"url": "https://a.example/x"}}},
        {"type": "track", "userId": "u2", "messageId": str(uuid.uuid4()), "timestamp": early},
    ]  # fmt: skip
    r = post(svc, ndjson(messages), f"{NDJSON}; format=segment")
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["rejected_by_reason"]) == (1, {"missing_event": 1})
    rows = io.StringIO()
    out = csv.writer(rows)
    out.writerow(["event_id", "user_id", "timestamp", "event_type", "page_url"])
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for event_id in ids:
        out.writerow([event_id, "u1", early, "page_view", "https://a.example/"])
    r = post(svc, rows.getvalue().encode(), "text/csv")
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3
    got = archive_ids(svc.settings.archive_path)
    assert all(got[i] == 1 for i in ids)


def test_keys_the_write_scope_imports(svc: InProcessService) -> None:
    events = history(2)
    body = ndjson(events)
    none = post(svc, body, NDJSON, key=None)
    assert none.status_code == 401 and none.headers["content-type"] == "application/problem+json"
    assert post(svc, body, NDJSON, key=READ).status_code == 403
    assert post(svc, body, NDJSON, key="wrong").status_code == 401
    assert not set(archive_ids(svc.settings.archive_path)) & {e["event_id"] for e in events}
    assert post(svc, body, NDJSON).status_code == 200


@pytest.mark.parametrize(
    ("body", "ctype", "extra", "status", "says"),
    [
        (b"x\n", "application/json", {}, 415, "application/x-ndjson"),
        (b"x\n", f"{NDJSON}; format=parquet", {}, 415, "text/csv"),
        (b"x\n", NDJSON, {"content-encoding": "gzip"}, 415, "identity"),
        (b"", NDJSON, {}, 422, "the body is empty"),
        (b"event_id,user_id\n1,2\n", "text/csv", {}, 422, "the header lacks timestamp"),
        (b"{}\n" * 40_000, NDJSON, {}, 413, "65536 bytes"),
    ],
)
def test_bad_bodies_are_problems_and_import_nothing(
    svc: InProcessService, body: bytes, ctype: str, extra: dict[str, str], status: int, says: str
) -> None:
    before = archive_ids(svc.settings.archive_path)
    r = post(svc, body, ctype, **extra)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert says in r.json()["detail"], r.json()
    assert archive_ids(svc.settings.archive_path) == before


def test_a_second_import_at_once_is_a_409(svc: InProcessService) -> None:
    root = svc.settings.archive_path
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".import.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = post(svc, ndjson(history(2)), NDJSON)
    finally:
        os.close(fd)
    assert r.status_code == 409, r.text
    assert r.headers["retry-after"] == "10"
    assert "another import into this archive is running" in r.json()["detail"]
    assert post(svc, ndjson(history(2)), NDJSON).status_code == 200


@pytest.mark.slow
def test_a_worker_killed_mid_result_is_a_503_and_the_body_sent_again_finishes(
    db: Backend, tmp_path: Path
) -> None:
    """The service runs the import in a thread of its own process, and its worker
    processes are that process's children: one killed -9 while it sends a block's result
    (the instant an import once hung at: see import_pool.py) ends the request with 503
    import-worker-lost, and the same body sent again imports the rest, each event once."""
    root = tmp_path / "archive"
    env = {**env_for(db, root), "EA_IMPORT_BLOCK_BYTES": "65536", "EA_WRITE_KEYS": WRITE,
           **STOPPABLE}  # fmt: skip
    events = history(60_000, hours=24)
    body = ndjson(events)
    headers = {"content-type": NDJSON, "authorization": f"Bearer {WRITE}"}
    with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as service:
        assert service.proc is not None
        before = spawned_under(service.proc.pid)
        url = f"{service.url}/api/import"
        with ThreadPoolExecutor(1) as thread:
            # A hang fails here (ReadTimeout), not at the suite's end.
            sent = thread.submit(httpx.post, url, content=body, headers=headers, timeout=120)
            workers: set[int] = set()
            deadline = time.monotonic() + 120
            while not workers and not sent.done() and time.monotonic() < deadline:
                workers = spawned_under(service.proc.pid) - before
                time.sleep(0.01)
            assert len(workers) == 1, (workers, sent.done() and sent.result().text)
            worker = workers.pop()
            kill_worker_while("sending", parent_of(worker), worker)
            r = sent.result()
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "10"
        problem = r.json()
        assert problem["type"].endswith("import-worker-lost"), problem
        assert problem["detail"].startswith("an import worker process ended"), problem
        assert "send it again to finish" in problem["detail"]
        assert set(archive_ids(root).values()) <= {1}
        again = httpx.post(url, content=body, headers=headers, timeout=300)
        assert again.status_code == 200, again.text
        assert archive_ids(root) == Counter({e["event_id"]: 1 for e in events})
