"""An import's worker processes as the import process sees them: blocks handed out in
the file's order, their results taken back in that order, and a worker's death seen
by every wait on it (``ImportWorkerLost``).

Not ``concurrent.futures.ProcessPoolExecutor``: its results come back through one pipe
that the import process also holds the writing end of, read by its manager thread. A
worker killed (-9, the OOM killer) while it was sending a result (one is larger than a
pipe holds) left half a message in that pipe; the thread waited for the rest for ever,
as did the block's future and ``shutdown(wait=True)``: the import hung instead of
failing. Here each worker has a pipe of its own each way, and this process closes its
copy of the worker's ends once it has started: when the worker dies, its result pipe
reads end of file (a whole message or not), and a block sent to it fails (EPIPE).

Block ``i`` goes to worker ``i % n``; a worker takes its blocks in order, so results
are read back worker by worker in the same rotation (blocks are the same size, so the
rotation shares the work evenly).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from event_analytics.config import Settings
from event_analytics.errors import ImportWorkerLost
from event_analytics.import_work import Block
from event_analytics.import_worker import serve


@dataclass
class _Worker:
    process: BaseProcess
    tasks: Connection  # this process writes blocks to check
    results: Connection  # and reads what came of them


class WorkerPool:
    """``workers`` processes checking blocks (``import_worker.serve``); ``close`` at the end."""

    def __init__(self, settings: Settings, workers: int) -> None:
        # spawn, not fork: POST /api/import runs in a thread of the service's process.
        context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._order: deque[_Worker] = deque()  # whose result comes next, per block sent
        self._sent = 0
        try:
            for _ in range(workers):
                tasks_r, tasks_w = context.Pipe(duplex=False)
                results_r, results_w = context.Pipe(duplex=False)
                process = context.Process(
                    target=serve, args=(settings, tasks_r, results_w), daemon=True
                )
                self._workers.append(_Worker(process, tasks_w, results_r))
                process.start()
                # The worker's ends are the worker's alone: its death is their end of file.
                tasks_r.close()
                results_w.close()
        except BaseException:
            self.close()
            raise

    def submit(self, path: Path, start: int, end: int, fmt: str, kept: datetime) -> None:
        """Hand out the block of ``path`` from ``start`` to ``end`` (``next`` takes its result)."""
        worker = self._workers[self._sent % len(self._workers)]
        self._sent += 1
        try:
            # A few small messages at most wait in the pipe: this never blocks.
            worker.tasks.send((path, start, end, fmt, kept))
        except OSError as exc:  # BrokenPipeError: the worker is gone
            raise _lost() from exc
        self._order.append(worker)

    @property
    def owed(self) -> int:
        """Blocks handed out whose results ``next`` has not taken yet."""
        return len(self._order)

    async def next(self) -> Block:
        """The result of the oldest block handed out and not yet taken. Raises
        ImportWorkerLost (its worker died), or what checking the block raised."""
        worker = self._order[0]  # still owed (``close``) until its result is read
        await _readable(worker.results)
        try:
            # Readable: the message has begun (or the worker is gone). Its rest follows
            # at once from a live worker, and a dead one's pipe ends: this read ends too.
            kind, value = worker.results.recv()
        except (EOFError, OSError) as exc:  # OSError: "got end of file during message"
            raise _lost() from exc
        self._order.popleft()
        if kind == "error":
            raise value
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop the workers and wait for each: what they still had to do is dropped."""
        for worker in self._workers:
            worker.tasks.close()  # an idle worker ends by itself on this end of file
            if worker.process.pid is not None and worker.process.is_alive():
                # One with a block in hand would check it for nobody, and one that
                # cannot read its pipe (stopped) would never end: so every wait below ends.
                worker.process.kill()
        for worker in self._workers:
            if worker.process.pid is not None:
                worker.process.join()
            worker.results.close()
        self._workers, self._order = [], deque()


def _lost() -> ImportWorkerLost:
    return ImportWorkerLost(
        "an import worker process ended before finishing its part (killed, or out of memory)"
    )


async def _readable(conn: Connection) -> None:
    """Wait, on the running loop, until ``conn`` has something to read or its end."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
