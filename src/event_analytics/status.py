"""``event-analytics status``: health, the last minutes' counts and the archive, as tables.

Exit status 0 when the service answers and is ready, 1 otherwise (so it can gate
scripts and probes); the tables are printed either way, as far as they could be read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from event_analytics.config import client_headers

MINUTES = 10
BAR_WIDTH = 30


@dataclass(slots=True)
class Snapshot:
    """What the service answered; a part is None when it could not be read."""

    url: str
    health: dict[str, Any] | None = None
    ready: dict[str, Any] | None = None
    ready_status: int | None = None
    minutes: list[dict[str, Any]] | None = None
    archive: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.health is not None and self.ready_status == 200


async def _get(session: aiohttp.ClientSession, path: str, snap: Snapshot) -> tuple[int, Any]:
    try:
        async with session.get(path) as r:
            if r.status in (401, 403):
                snap.errors.append(
                    f"GET {path}: {r.status}, the read scope needs a key: EA_API_KEY"
                )
            return r.status, await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        snap.errors.append(f"GET {path}: {exc or type(exc).__name__}")
        return 0, None


async def fetch(url: str, minutes: int = MINUTES, timeout_s: float = 5.0) -> Snapshot:
    """Read the four endpoints concurrently."""
    snap = Snapshot(url)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(url, timeout=timeout, headers=client_headers()) as session:
        (h, health), (r, ready), (m, rows), (a, archive) = await asyncio.gather(
            _get(session, "/health/", snap),
            _get(session, "/health/ready", snap),
            _get(session, f"/analytics/page_views_per_minute?minutes={minutes}", snap),
            _get(session, "/persistent/status", snap),
        )
    snap.health = health if h == 200 else None
    snap.ready, snap.ready_status = (ready, r) if r else (None, None)
    snap.minutes = rows if m == 200 else None
    snap.archive = archive if a == 200 else None
    return snap


def _service_table(snap: Snapshot) -> Table:
    table = Table(title="event-analytics", show_header=False)
    table.add_column("what")
    table.add_column("state")
    table.add_row("url", snap.url)
    if snap.health is None:
        table.add_row("health", "[bold red]unreachable")
    else:
        table.add_row("health", f"[green]{snap.health.get('status', '?')}")
    ready = snap.ready or {}
    engine = ready.get("engine") or {}
    if snap.ready_status == 200:
        table.add_row("ready", "[green]ready")
        where = "embedded" if engine.get("embedded") else "external"
        table.add_row("engine", f"{engine.get('engine')} {engine.get('version')} ({where})")
        table.add_row(
            "acknowledged means",
            f"{ready.get('ack_durability')} (appendfsync {engine.get('appendfsync')})",
        )
    elif snap.ready_status is not None:
        reason = engine.get("error") or ready.get("status") or snap.ready_status
        table.add_row("ready", f"[bold red]not ready: {reason}")
    return table


def _minutes_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Page views, last {len(rows)} minutes (UTC)")
    table.add_column("minute")
    table.add_column("views", justify="right")
    table.add_column("unique users", justify="right")
    table.add_column("")
    peak = max((int(r["count"]) for r in rows), default=0) or 1
    for row in rows:
        count = int(row["count"])
        minute = str(row["minute_timestamp"])[11:16]
        bar = "█" * round(BAR_WIDTH * count / peak)
        table.add_row(minute, f"{count:,}", f"{int(row['unique_users']):,}", f"[cyan]{bar}")
    return table


def _archive_table(body: dict[str, Any]) -> Table:
    stats = body.get("stats", {})
    table = Table(title="Archive", show_header=False)
    table.add_column("what")
    table.add_column("state", justify="right")
    running = bool(stats.get("is_processor_running"))
    table.add_row(
        "status", f"[green]{body.get('status')}" if running else f"[yellow]{body.get('status')}"
    )
    table.add_row("events waiting in the stream", f"{stats.get('stream_length', 0):,}")
    table.add_row("pending (read, not yet written)", f"{stats.get('pending_messages', 0):,}")
    table.add_row("hourly files", f"{stats.get('files_count', 0):,}")
    table.add_row("size", f"{stats.get('files_size_mb', 0)} MB")
    return table


def render(snap: Snapshot, console: Console) -> None:
    """Print the tables that could be read, then what could not."""
    console.print(_service_table(snap))
    if snap.minutes is not None:
        console.print(_minutes_table(snap.minutes))
    if snap.archive is not None:
        console.print(_archive_table(snap.archive))
    # Unreachable: every request failed the same way; one line says it.
    for error in snap.errors[:1] if snap.health is None else snap.errors:
        console.print(f"[red]{error}", soft_wrap=True)


def main(url: str, minutes: int = MINUTES, console: Console | None = None) -> int:
    """Fetch and print; the process exit status (0 ready, 1 unreachable or not ready)."""
    snap = asyncio.run(fetch(url, minutes))
    render(snap, console or Console())
    return 0 if snap.ok else 1
