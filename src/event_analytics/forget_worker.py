"""The erasure jobs' worker: ``serve`` runs it as a supervised child (``forget-worker``)
while admin keys are set; it runs the jobs ``POST /api/v1/admin/forget`` queues, one at
a time, oldest first.

Its own process, not an ingest worker's event loop (an erasure reads hour files and
rebuilds days of counters: seconds to minutes of work that would stall the loop that
acknowledges events) and not the archiver (which an erasure pauses and waits for).

One job at a time, across every service sharing the engine: only the holder of the
lease (``Keys.forget_lease``) runs one. A job stays at the queue's head until it has
ended, so a worker killed mid-job (or the whole service) runs it again when it is back:
``forget`` run again finishes what a killed run left (forgetting.py's run record) and
removes nothing more. A job that keeps dying (``MAX_ATTEMPTS`` starts) fails instead of
blocking the queue. While the engine is unreachable nothing can be recorded: the job
stays queued and is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator

from event_analytics.config import Settings
from event_analytics.errors import StorageUnavailable
from event_analytics.forgetting import ForgetError, Progress, forget
from event_analytics.store import IngestWriter
from event_analytics.store.forget_jobs import ForgetJobs

log = logging.getLogger(__name__)
POLL_S = 0.5  # how soon a queued job starts when the worker is idle
REPORT_S = 1.0  # how often a running job's counts are written for GET
MAX_ATTEMPTS = 10
# Erasure is no latency matter; ingest is: the kernel gives the workers the CPU first.
NICENESS = 10


class ForgetWorker:
    def __init__(self, settings: Settings, store: IngestWriter) -> None:
        self.settings = settings
        self.store = store
        self.jobs = ForgetJobs(store.client, store.keys)
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.lease_ms = int(settings.archiver_lease_s * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        """Run queued jobs until ``stop`` is set."""
        backoff = POLL_S
        while not stop.is_set():
            try:
                ran = await self.run_next()
                backoff = POLL_S
            except StorageUnavailable as exc:
                log.warning("erasure jobs: engine unavailable (%s); retrying", exc)
                ran, backoff = False, min(backoff * 2, 10.0)
            if not ran:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)

    async def run_next(self) -> bool:
        """Run the job at the queue's head, if any and if this worker holds the lease;
        whether there was one to run."""
        job_id = await self.jobs.head()
        if job_id is None or not await self.jobs.take_lease(self.owner, self.lease_ms):
            return False
        try:
            async with self._leased():
                await self._run(job_id)
        finally:
            with contextlib.suppress(StorageUnavailable):
                await self.jobs.drop_lease(self.owner)
        return True

    @contextlib.asynccontextmanager
    async def _leased(self) -> AsyncIterator[None]:
        async def renew() -> None:
            while True:
                await asyncio.sleep(self.lease_ms / 3000)
                with contextlib.suppress(StorageUnavailable):
                    if not await self.jobs.renew_lease(self.owner, self.lease_ms):
                        # Another worker may start this job too; the archive pause
                        # still lets one erasure at a time rewrite and rebuild.
                        log.warning("erasure jobs: the lease was lost; going on")

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, job_id: str) -> None:
        job = await self.jobs.get(job_id)
        users = await self.jobs.users(job_id)
        progress = Progress(phase="starting")
        if job is None or job.state in ("done", "failed"):
            await self.jobs.drop(job_id)  # ended before a crash took it off the queue
            return
        if users is None:
            await self.jobs.end(job_id, progress.as_dict(), error="the job names no user ids")
            return
        attempts = await self.jobs.start(job_id)
        if attempts > MAX_ATTEMPTS:
            why = (
                f"the erasure was interrupted {MAX_ATTEMPTS} times (see the service's log); "
                "the users are refused from now on; send the request again to finish"
            )
            await self.jobs.end(job_id, progress.as_dict(), error=why)
            return
        log.info("erasure job %s started (attempt %d)", job_id, attempts)
        reporter = asyncio.create_task(self._report(job_id, progress))
        try:
            report = await forget(self.settings, self.store, users, progress=progress)
        except ForgetError as exc:
            await self._stop(reporter)
            await self.jobs.end(job_id, progress.as_dict(), error=str(exc))
            log.warning("erasure job %s failed: %s", job_id, exc)
            return
        except StorageUnavailable:
            await self._stop(reporter)
            raise  # nothing can be recorded now: the job stays at the head
        except Exception as exc:
            await self._stop(reporter)
            log.exception("erasure job %s failed", job_id)
            why = (
                f"the erasure stopped on an unexpected error ({type(exc).__name__}: {exc}); "
                "the users are refused from now on; send the request again to finish"
            )
            await self.jobs.end(job_id, progress.as_dict(), error=why)
            return
        await self._stop(reporter)
        await self.jobs.end(job_id, progress.as_dict(), result=report.record())
        log.info("erasure job %s done: %d events removed", job_id, report.events_removed)

    async def _report(self, job_id: str, progress: Progress) -> None:
        while True:
            with contextlib.suppress(StorageUnavailable):
                await self.jobs.report(job_id, progress.as_dict())
            await asyncio.sleep(REPORT_S)

    @staticmethod
    async def _stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
