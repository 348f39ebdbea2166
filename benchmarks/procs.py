"""Processes for the benchmarks and the tests: free ports, a private engine, group teardown.

A private engine is waited for as ``serve`` waits for its embedded one (``wait_for_ping``).

Here, not in the product (``src/``) and not under ``tests/``: the benchmark scripts run as
``python benchmarks/x.py``, so their own folder is on ``sys.path`` and they import this as
``procs``; under pytest the repository root is on ``sys.path``, so the tests import it as
``benchmarks.procs``. Neither needs a path hack.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

from event_analytics.store.embedded import free_port, wait_for_ping

__all__ = ["EngineProcess", "free_port", "free_ports", "stop_group"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class EngineProcess:
    """One private engine on a loopback port, killable and restartable on the same files.

    ``aof``: as the service runs it (AOF, fsync always); without, no persistence at all.
    """

    def __init__(
        self,
        binary: str,
        directory: Path,
        port: int | None = None,
        extra_args: list[str] | None = None,
        aof: bool = True,
    ) -> None:
        self.binary = binary
        self.dir = directory
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.aof
            else ["--appendonly", "no"]
        )  # fmt: skip
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            *persistence,
            "--save", "",
            # A snapshot (backup's valkey-cli --rdb) or a replica's first sync starts at
            # once: by default the engine waits 5 s for more replicas to share the
            # transfer, which every backup test and every cluster's forming paid.
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(self.dir / "server.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_for_ping(self.url, self.proc, "engine", self.dir / "server.log", timeout_s)

    def kill(self) -> None:
        """SIGKILL: no shutdown work, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> EngineProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``: the
    service, its workers and its engine); SIGKILL it if it is not gone in ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
