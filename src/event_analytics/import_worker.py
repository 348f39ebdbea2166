"""An import's worker process: its start, and its one task (a block checked by
``import_work.Checker``). Apart from ``import_work`` because of what a worker must not
import before it starts: see ``start``."""

from __future__ import annotations

import gc
import os
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from event_analytics.config import Settings
    from event_analytics.import_work import Block, Checker

_checker: Checker | None = None
_PARENT_POLL_S = 1.0
_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # telemetry.MULTIPROC_ENV, read at its import


def start(settings: Settings) -> None:
    """The pool's initializer, the first code of a worker that imports anything of ours
    beyond this module: so it can leave the service's metrics directory first. The
    worker records no metrics, and the values files prometheus-client makes at import
    there (1 MiB each, reserved) would stay after it, for every import. Then: its
    Checker, no Ctrl-C of its own (the import process stops the pool), and an exit when
    the import process is gone (killed with -9, it cannot tell its pool: the workers
    would wait on their queue for ever)."""
    global _checker
    os.environ.pop(_METRICS_ENV, None)
    from event_analytics.import_work import Checker

    _checker = Checker(settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    # As the import process does (importing.rare_collections): no collections set off by
    # a block's many allocations, one of the young generations per block instead.
    gc.freeze()
    gc.disable()


def _exit_with(parent: int) -> None:
    stop = threading.Event()
    while not stop.wait(_PARENT_POLL_S):
        if os.getppid() != parent:
            os._exit(1)


def check_file_block(path: Path, start: int, end: int, fmt: str, kept: datetime) -> Block:
    """The worker's task: ``Checker.file_block`` with the worker's Checker."""
    assert _checker is not None, "start runs first"
    gc.collect(1)  # the last block's objects are gone by now: little to walk
    return _checker.file_block(str(path), start, end, fmt, kept)
