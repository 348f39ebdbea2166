"""The per-run directory where worker processes keep their Prometheus values.

Kept apart from ``telemetry`` because it must run before prometheus_client is imported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare(root: Path) -> Path:
    """Create ``root/<pid>`` empty (``EA_METRICS_DIR``, default ``DATA_DIR/metrics``), point
    prometheus-client at it, and return it.

    Values left by a previous run would be added to this one's, so the directory is new
    for every run; those of runs that died without cleaning up are removed here, while
    a live ``serve`` sharing the data dir (external Redis) keeps its own.
    """
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = root / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    os.environ[ENV] = str(mine.resolve())
    return mine


def remove(path: Path) -> None:
    """Delete the run's directory at shutdown."""
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
