"""Real servers for tests: the service itself as a subprocess, and which engine binary to run
(the engine process itself is ``benchmarks.procs.EngineProcess``, shared with the benchmarks)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from benchmarks.procs import free_port
from event_analytics.config import SETTINGS_ENV
from event_analytics.store.embedded import find_server_binary

if TYPE_CHECKING:
    from tests.backends import Backend

# Variables that choose the engine: a test's service uses only what the test passes.
# (and a parent serve's hand-off of its whole settings)
ENGINE_VARIABLES = frozenset(
    {"REDIS_URL", "EA_REDIS_URL", "REDIS_CLUSTER_URL", "EA_REDIS_CLUSTER_URL", "EA_SHARDS"}
    | {SETTINGS_ENV}
)


# One client for all tests: httpx.post() builds a new client (and TLS context) per call,
# ~50 ms of CPU each, which made request loops in tests slow, and the readiness polls
# (every 0.1 s) took a core's third from the service starting beside them.
HTTP = httpx.Client(timeout=10)

# False while a test not marked slow runs (conftest): it must not start the service.
PROCESSES_ALLOWED = True


def engine_binary(kind: str) -> str | None:
    """'valkey' = the bundled Valkey; 'redis' = Debian's redis-server, if installed."""
    if kind == "valkey":
        return find_server_binary()
    return shutil.which("redis-server")


class ServiceProcess:
    """``python -m event_analytics serve`` as a subprocess, reached over real HTTP."""

    # Its client, as tests.inproc.InProcessService has one: a test body written against
    # ``svc.url`` and ``svc.http`` runs on either.
    http = HTTP

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        args: list[str] | None = None,
        command: list[str] | None = None,
    ):
        """``command`` replaces ``python -m event_analytics serve --port ...`` (then the
        environment must say where to listen)."""
        self.data_dir = data_dir
        self.port = free_port()
        # Only what the test passes decides the engine, not the caller's environment.
        inherited = {k: v for k, v in os.environ.items() if k not in ENGINE_VARIABLES}
        self.env = inherited | (env or {})
        self.workers = workers
        self.args = args or []
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        assert PROCESSES_ALLOWED, "a test that starts the service is marked slow"
        cmd = self.command or [
            sys.executable, "-m", "event_analytics", "serve",
            "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--workers", str(self.workers), *self.args,
        ]  # fmt: skip
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.output()}")
            try:
                if HTTP.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not ready: {self.output()}")
            time.sleep(0.1)

    def wait_alive(self, timeout_s: float = 60.0) -> None:
        """Until /health/ answers (readiness aside: the engine may be down on purpose)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            try:
                if HTTP.get(f"{self.url}/health/", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve not alive: {self.output()}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill_tree(self) -> None:
        """SIGKILL the service and everything it started (workers and engine) at once."""
        assert self.proc is not None
        pids = [*_descendants(self.proc.pid), self.proc.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        _wait_gone(pids)
        self.log.close()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_tree()
        self.log.close()
        return self.proc.returncode


@contextlib.contextmanager
def stopped_after(svc: ServiceProcess) -> Iterator[ServiceProcess]:
    """Start ``svc``; stop it afterwards, also when it never became ready."""
    try:
        svc.start()
        yield svc
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.stop()
        elif svc.proc is not None:
            svc.log.close()


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            assert time.monotonic() < deadline, f"process {pid} did not die"
            time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return "X"


class ArchiverProcess:
    """``event-analytics archiver`` as a subprocess (``worker.Archiver`` is what it runs)."""

    def __init__(self, env: dict[str, str], log: Path, fsize: int | None = None) -> None:
        assert PROCESSES_ALLOWED, "a test that starts the archiver is marked slow"

        def limit() -> None:
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "event_analytics", "archiver"],
            env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=limit,
        )  # fmt: skip

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.log.close()

    def __enter__(self) -> ArchiverProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def archiving_service(
    db: Backend, tmp_path: Path, settings: dict[str, str], args: list[str] | None = None
) -> Iterator[tuple[ServiceProcess, dict[str, str], Path]]:
    """The service on ``db`` with its archive under ``tmp_path``: (service, its env, the
    archive's root), stopped afterwards. ``settings``: more EA_* for it and the CLIs."""
    root = tmp_path / "archive"
    env = db.env | {"EA_ARCHIVE_DIR": str(root), **settings}
    svc = ServiceProcess(tmp_path / "data", env=env, args=args)
    svc.start()
    try:
        yield svc, env, root
    finally:
        svc.stop()
