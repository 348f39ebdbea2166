"""Which engine a command talks to: REDIS_CLUSTER_URL or REDIS_URL, a running serve's
embedded engine, or its own."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from event_analytics.config import Settings
from event_analytics.errors import EventAnalyticsError, InvalidInput
from event_analytics.store.embedded import (
    DataDirInUse,
    DataDirLock,
    EmbeddedServer,
    url_file,
)

if TYPE_CHECKING:
    from event_analytics.store import IngestWriter


@contextlib.contextmanager
def engine_settings(settings: Settings) -> Iterator[Settings]:
    """``settings`` with the engine to use for the command's duration.

    REDIS_CLUSTER_URL or REDIS_URL: as they are. The embedded engine: when a ``serve``
    owns the data dir, its engine's URL; when none does, the data dir's engine is
    started for this command (and stopped after), and its URL.
    """
    if settings.engine_kind != "embedded":
        yield settings
        return
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire(wait_s=0)
    except DataDirInUse:
        found = url_file(settings.data_dir)
        if not found.exists():
            raise
        yield settings.model_copy(update={"redis_url": found.read_text().strip()})
        return
    engine = EmbeddedServer(
        settings.data_dir,
        inherit_fd=lock.fd,
        maxmemory=settings.engine_maxmemory,
        engine_dir=settings.engine_path,
    )
    try:
        engine.start()
        yield settings.model_copy(update={"redis_url": engine.url})
    finally:
        engine.stop()
        lock.release()


def run_with_engine(settings: Settings, run: Callable[[Settings], Coroutine[Any, Any, int]]) -> int:
    """Run a command's ``run`` with the settings of the engine to use (``engine_settings``);
    exit status 1 with one line when another process holds the data dir without an engine."""
    try:
        with engine_settings(settings) as resolved:
            return asyncio.run(run(resolved))
    except DataDirInUse as exc:
        print(f"event-analytics: {exc}", file=sys.stderr)
        return 1


def run_on_writer(
    settings: Settings, command: str, act: Callable[[IngestWriter], Awaitable[None]]
) -> int:
    """Run ``act`` on a writer of the engine to use (``run_with_engine``), closed after.

    What ``act`` raises of ours is one line on stderr headed ``event-analytics <command>``:
    input the store refuses exits 2, anything else (an unknown id, the engine away) 1.
    """

    async def run(resolved: Settings) -> int:
        from event_analytics.store import IngestWriter

        store = IngestWriter.from_settings(resolved)
        try:
            await act(store)
        except EventAnalyticsError as exc:
            print(f"event-analytics {command}: {exc.detail()}", file=sys.stderr)
            return 2 if isinstance(exc, InvalidInput) else 1
        finally:
            await store.close()
        return 0

    return run_with_engine(settings, run)
