"""The query processes of ``serve --query-workers N``: the same app, in the query role,
on a unix socket only the workers reach, at a lower CPU priority than the workers.

The ingest workers forward the heavy read routes here (api/forward.py). ``serve``
supervises one uvicorn with N workers on the socket: it is restarted if it exits, and
uvicorn replaces a worker that dies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from event_analytics.config import Settings
from event_analytics.supervisor import Child, Supervised, lower_priority

# Below the workers': the kernel gives ingest the CPU first when both want it (2 cores,
# one worker and one query process: a read storm takes the idle time, not ingest's).
NICENESS = 10
# sockaddr_un's path field is 108 bytes, the final NUL included.
_MAX_SOCKET_PATH = 100
READY_TIMEOUT_S = 60.0


def socket_path(settings: Settings) -> Path:
    """A new socket path for this serve, in a directory only its user can enter: the
    query role trusts the client address the workers pass along."""
    run = settings.data_dir / "run"
    name = f"query-{os.getpid()}.sock"
    if len(str((run / name).resolve())) > _MAX_SOCKET_PATH:
        return Path(tempfile.mkdtemp(prefix="ea-run-")) / name
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    run.chmod(0o700)
    return (run / name).resolve()


def supervised(settings: Settings, entry: Callable[[], int] | None = None) -> Supervised:
    """The query server as a child of serve, with the settings it must run with
    (``entry``: the command as a function, for a start by fork; supervisor.py)."""
    path = settings.query_socket
    assert path is not None
    env = {**os.environ, **settings.model_copy(update={"query_role": True}).handoff()}

    def clear() -> None:
        # A socket file left by a killed predecessor would make bind fail.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def wait_ready(proc: Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _accepts(path):
            if proc.poll() is not None:
                raise RuntimeError(f"the query server exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the query server did not listen within {READY_TIMEOUT_S} s")
            time.sleep(0.05)

    argv = [sys.executable, "-m", "event_analytics", "query-server"]
    return Supervised(
        "queries", argv, env=env, before_start=clear, wait_ready=wait_ready, entry=entry
    )


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def run(settings: Settings) -> int:
    """Serve the app in the query role on ``settings.query_socket`` until stopped."""
    import uvicorn

    from event_analytics import logs

    if settings.query_socket is None or not settings.query_role:
        print("event-analytics: query-server is started by serve --query-workers",
              file=sys.stderr)  # fmt: skip
        return 2
    lower_priority(NICENESS)  # inherited by uvicorn's worker processes
    uvicorn.run(
        "event_analytics.api.app:create_app",
        factory=True,
        uds=str(settings.query_socket),
        workers=settings.query_workers,
        http="httptools",
        log_config=logs.config(),
        log_level="info",
        access_log=False,
        # The forwarding worker resolved the client's address (X-EA-Peer); nothing else
        # on this socket may set it.
        proxy_headers=False,
        timeout_keep_alive=60,
    )
    return 0
