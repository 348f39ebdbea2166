"""Which engine a command talks to: REDIS_CLUSTER_URL or REDIS_URL, a running serve's
embedded engine, or its own."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from event_analytics.config import Settings
from event_analytics.store.embedded import (
    DataDirInUse,
    DataDirLock,
    EmbeddedServer,
    url_file,
)


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
