"""Which engine a command talks to: REDIS_CLUSTER_URL or REDIS_URL, a running serve's
embedded engine, or its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from event_analytics.config import Settings
from event_analytics.store.embedded import (
    DataDirInUse,
    DataDirLock,
    EmbeddedServer,
    url_file,
)


@contextlib.contextmanager
def engine_url(settings: Settings) -> Iterator[str]:
    """The URL to use for the command's duration.

    REDIS_CLUSTER_URL or REDIS_URL wins (``store.connect`` makes a cluster client for the
    former). Otherwise, when a ``serve`` owns the data dir, its embedded engine; when none
    does, the data dir's engine is started for this command and stopped after.
    """
    external = settings.redis_cluster_url or settings.redis_url
    if external:
        yield external
        return
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire(wait_s=0)
    except DataDirInUse:
        found = url_file(settings.data_dir)
        if not found.exists():
            raise
        yield found.read_text().strip()
        return
    engine = EmbeddedServer(settings.data_dir, inherit_fd=lock.fd)
    try:
        engine.start()
        yield engine.url
    finally:
        engine.stop()
        lock.release()
