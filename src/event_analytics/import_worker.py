"""An import's worker process: its start, and its loop over the blocks the import
process sends (``import_pool.WorkerPool``), each checked by ``import_work.Checker``.
Apart from ``import_work`` because of what a worker must not import before it starts:
see ``start``."""

from __future__ import annotations

import gc
import os
import pickle
import signal
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from event_analytics.config import Settings
    from event_analytics.import_work import Block, Checker

_checker: Checker | None = None
_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # telemetry.MULTIPROC_ENV, read at its import


def serve(settings: Settings, tasks: Connection, results: Connection) -> None:
    """The worker's whole life: ``start``, then each block sent on ``tasks`` checked and
    its result (or what checking it raised) sent back on ``results``, until the import
    process closes ``tasks`` or is gone. Killed with -9, the import process cannot say
    so; its ends of both pipes close with it all the same: waiting for a block ends (end
    of file), and so does sending a result (EPIPE)."""
    start(settings)
    while True:
        try:
            path, first, end, fmt, kept = tasks.recv()
        except EOFError:
            return
        out: tuple[str, object]
        try:
            out = ("block", check_file_block(path, first, end, fmt, kept))
        except Exception as exc:  # the import process raises it (an unreadable file)
            out = ("error", _picklable(exc))
        try:
            results.send(out)
        except OSError:  # BrokenPipeError: the import process is gone
            return


def _picklable(exc: Exception) -> Exception:
    """``exc``, or its text when it cannot be sent to the import process."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 (the bytes just made here)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def start(settings: Settings) -> None:
    """The first code of a worker that imports anything of ours beyond this module: so
    it can leave the service's metrics directory first. The worker records no metrics,
    and the values files prometheus-client makes at import there (1 MiB each, reserved)
    would stay after it, for every import. Then: its Checker, and no Ctrl-C of its own
    (the import process stops its workers)."""
    global _checker
    os.environ.pop(_METRICS_ENV, None)
    from event_analytics.import_work import Checker

    _checker = Checker(settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As the import process does (importing.rare_collections): no collections set off by
    # a block's many allocations, one of the young generations per block instead.
    gc.freeze()
    gc.disable()


def check_file_block(path: Path, start: int, end: int, fmt: str, kept: datetime) -> Block:
    """The worker's task: ``Checker.file_block`` with the worker's Checker."""
    assert _checker is not None, "start runs first"
    gc.collect(1)  # the last block's objects are gone by now: little to walk
    return _checker.file_block(str(path), start, end, fmt, kept)
