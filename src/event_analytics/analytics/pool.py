"""DuckDB execution: a bounded pool off the event loop, a time limit, a memory limit, and
a directory of its own for what a query spills past that limit."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from event_analytics.analytics.visit_cache import VisitCache
from event_analytics.errors import EventAnalyticsError

T = TypeVar("T")


class QueryBusy(EventAnalyticsError):
    """As many analytics queries as allowed are running; retry shortly."""

    status, slug, title = 503, "analytics-busy", "Too many analytics queries"
    retry_after_s = 1

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} analytics queries are running, the most allowed at once")

    def detail(self) -> str:
        return f"{self}; retry after {self.retry_after_s} s"


class QueryTimeout(EventAnalyticsError):
    """A query ran past its time limit and was interrupted."""

    status, slug, title = 504, "analytics-timeout", "Analytics query timed out"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the query ran longer than {seconds:g} s and was stopped; narrow its range "
            "or its steps"
        )
        self.seconds = seconds


class QueryEngine:
    """One in-memory DuckDB database; each query runs on its own cursor in the pool.
    ``visit_cache_bytes`` bounds its cache of sessionized visits (0: none).

    What a query spills past ``memory_limit`` goes to a directory of this engine's own,
    made under ``spill_dir`` (the service's and the CLI's: ``<data dir>/spill``; else the
    system's temporary directory) and removed by ``close`` or at exit. DuckDB's own
    default for an in-memory database is ``.tmp`` in the working directory: a
    repository's, or one a container may not write."""

    def __init__(
        self,
        *,
        max_concurrent: int = 2,
        timeout_s: float = 30.0,
        memory_limit: str = "1GB",
        threads: int = 2,
        visit_cache_bytes: int = 0,
        spill_dir: Path | None = None,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.timeout_s = timeout_s
        if spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)
        self._spill = Path(tempfile.mkdtemp(prefix="duckdb-", dir=spill_dir))
        # Removed by close, or at exit by a command that never closes its engine.
        self._remove_spill = weakref.finalize(self, shutil.rmtree, self._spill, True)
        self._db = duckdb.connect(
            ":memory:",
            config={
                "memory_limit": memory_limit,
                "threads": threads,
                "temp_directory": str(self._spill),
            },
        )
        # Settings of every cursor (each is a connection of its own), set once for all:
        # set on each cursor they were two more statements a query (~10 % of a small one).
        self._db.execute("SET GLOBAL TimeZone = 'UTC'")
        # DuckDB cannot estimate read_json's rows; under this threshold it would plan
        # an ASOF join as a nested loop, quadratic in each user's events.
        self._db.execute("SET GLOBAL asof_loop_join_threshold = 0")
        # A fill is a few statements, each within the time limit: waiters wait that long.
        self.visit_cache = VisitCache(self.fetch, visit_cache_bytes, wait_s=4 * timeout_s)
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="analytics")
        self._running = 0
        self._lock = threading.Lock()

    def fetch(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement on a new cursor, interrupted at the time limit."""
        return self.describe(sql, params)[1]

    def describe(
        self, sql: str, params: dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of one statement, interrupted at the time limit."""
        cursor = self._db.cursor()
        timer = threading.Timer(self.timeout_s, cursor.interrupt)
        timer.daemon = True
        timer.start()
        try:
            result = cursor.execute(sql, params or {})
            names = [d[0] for d in result.description or []]
            return names, result.fetchall()
        except duckdb.InterruptException:
            raise QueryTimeout(self.timeout_s) from None
        finally:
            timer.cancel()
            cursor.close()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(self, *args)`` in the pool; QueryBusy at once when the pool is full."""
        with self._lock:
            if self._running >= self.max_concurrent:
                raise QueryBusy(self.max_concurrent)
            self._running += 1
        try:
            future = self._pool.submit(work, self, *args)
        except RuntimeError:  # shut down
            self._release(None)
            raise
        # Released when the work ends, not when the awaiting request goes away: a query
        # whose client left still holds its slot until it finishes or times out.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    @property
    def idle(self) -> bool:
        """No query running (the visit cache's refresh works only then)."""
        with self._lock:
            return self._running == 0

    def _release(self, _: object) -> None:
        with self._lock:
            self._running -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._db.close()
        self._remove_spill()
