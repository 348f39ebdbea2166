"""/persistent/status and /persistent/files read the archive's files off the event loop.

A slow disk must not stall ingest, so their glob, stat and reads run in worker threads.
Timing that in pytest would be flaky; instead the app runs in this process on a real
engine, an audit hook records which thread lists (os.scandir) or opens archive files,
and the loop's own thread must never be one of them while other threads are.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from event_analytics.api.app import create_app
from tests.backends import Backend

# Audit hooks cannot be removed: one for the session, that records only while armed.
_seen: list[tuple[int, str, str]] = []  # (thread id, audit event, path)
_armed: list[Path] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _armed or event not in ("os.scandir", "open") or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if isinstance(path, str | Path) and str(path).startswith(str(_armed[0])):
        _seen.append((threading.get_ident(), event, str(path)))


sys.addaudithook(_audit)


def _write_archive(root: Path, hours: int, lines: int) -> int:
    for hour in range(hours):
        day = root / "2026" / "11" / "27"
        day.mkdir(parents=True, exist_ok=True)
        rows = b"".join(b'{"event_id":"%d-%d"}\n' % (hour, n) for n in range(lines))
        (day / f"events_2026-11-27-{hour:02d}.jsonl").write_bytes(rows)
    return hours * lines


async def _ask(app: Any, paths: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """The loop thread's id and the answers, with the app's lifespan around them."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            answers = []
            for path in paths:
                r = await client.get(path)
                assert r.status_code == 200, r.text
                answers.append(r.json())
    return threading.get_ident(), answers


def test_archive_listing_runs_off_the_event_loop(db: Backend, tmp_path: Path) -> None:
    settings = db.settings(data_dir=tmp_path, key_prefix=db.prefix)
    root = settings.archive_path
    total = _write_archive(root, hours=3, lines=5)
    app = create_app(settings)
    _seen.clear()
    _armed.append(root)
    try:
        loop_thread, (status, files, again) = asyncio.run(
            _ask(app, ["/persistent/status", "/persistent/files", "/persistent/files"])
        )
    finally:
        _armed.clear()
    assert status["stats"]["files_count"] == 3
    assert files["total_files"] == 3 and files["total_events"] == total
    assert again["total_events"] == total
    # The archive was listed and read (the hook saw it), and never by the loop's thread.
    assert {event for _, event, _ in _seen} == {"os.scandir", "open"}
    on_loop = [(event, path) for thread, event, path in _seen if thread == loop_thread]
    assert on_loop == []
