"""A container engine (docker if its daemon answers, else podman) for tests: the image
built once by ``make image``, containers and compose projects that clean up after
themselves (every container, volume and network a test made carries its name prefix
or compose project label, and is removed by it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.servers import HTTP

ROOT = Path(__file__).resolve().parent.parent
# Beside the clone, here and in CI (shared/ is copied next to it there).
BASE_IMAGES = ROOT.parent / "shared" / "containers" / "base-images.sh"
RUN_ID = f"eat{os.getpid()}-{uuid.uuid4().hex[:6]}"
COMMAND_TIMEOUT_S = 180


def container_engine() -> str | None:
    """'docker' if a docker daemon answers, else 'podman' if installed, else None."""
    if shutil.which("docker"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0:
                return "docker"
    return "podman" if shutil.which("podman") else None


def can_install_podman() -> bool:
    """base-images.sh installs podman with apt-get, which needs root."""
    return BASE_IMAGES.exists() and os.geteuid() == 0 and shutil.which("apt-get") is not None


def run(*args: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env=None if env is None else os.environ | env,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")  # fmt: skip
    return result


def wait_ready(url: str, timeout_s: float = 90.0, what: str = "") -> float:
    """Poll /health/ready until 200; the seconds it took."""
    start = time.monotonic()
    last = ""
    while True:
        try:
            r = HTTP.get(f"{url}/health/ready", timeout=3)  # one client: no TLS context per poll
            if r.status_code == 200:
                return time.monotonic() - start
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{url} not ready after {timeout_s} s: {last}\n{what}")
        time.sleep(0.2)


class Engine:
    """The container engine's CLI."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.compose = ["podman-compose"] if name == "podman" else ["docker", "compose"]

    def __call__(self, *args: str, timeout: float = COMMAND_TIMEOUT_S,
                 check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return run(self.name, *args, timeout=timeout, check=check)

    def mountpoint(self, volume: str) -> Path:
        """Where a named volume's files are on this host (root engines)."""
        return Path(self("volume", "inspect", volume, "--format", "{{.Mountpoint}}").stdout.strip())

    def inspect(self, container: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self("inspect", container).stdout)
        return found[0]

    def logs(self, container: str) -> str:
        out = self("logs", "--tail", "40", container, check=False)
        return (out.stdout + out.stderr)[-4000:]

    def remove(self, kind: str, names: list[str]) -> None:
        """Remove containers / volumes / networks by name; missing ones are fine."""
        if names:
            force = ["-f"] if kind in ("container", "volume") else []
            self(kind, "rm", *force, *names, timeout=120, check=False)

    def labelled(self, kind: str, label: str) -> list[str]:
        fmt = "{{.Name}}" if kind != "container" else "{{.Names}}"
        listing = ["ps", "-a"] if kind == "container" else [kind, "ls"]
        out = self(*listing, "--filter", f"label={label}", "--format", fmt, check=False)
        return out.stdout.split()


class Container:
    """The image run alone (embedded engine) with a named volume on /data."""

    def __init__(self, engine: Engine, image: str, volume: str, port: int) -> None:
        self.engine, self.image, self.volume, self.port = engine, image, volume, port
        self.name = f"{RUN_ID}-{uuid.uuid4().hex[:6]}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self) -> float:
        """Create and start it; seconds until /health/ready answered 200."""
        start = time.monotonic()
        self.engine("run", "-d", "--name", self.name, "--label", f"ea-test={RUN_ID}",
                    "-v", f"{self.volume}:/data", "-p", f"127.0.0.1:{self.port}:8000",
                    self.image)  # fmt: skip
        wait_ready(self.url, what=self.engine.logs(self.name))
        return time.monotonic() - start

    def start(self) -> None:
        self.engine("start", self.name)
        wait_ready(self.url, what=self.engine.logs(self.name))

    def remove(self) -> None:
        self.engine.remove("container", [self.name])


class Compose:
    """One compose project of compose.yaml, started by ``make compose-up``."""

    def __init__(self, engine: Engine, image: str, port: int) -> None:
        self.engine, self.image, self.port = engine, image, port
        self.project = f"{RUN_ID}-{uuid.uuid4().hex[:4]}".replace("-", "")
        self.env = {"EA_HTTP_PORT": str(port), "EA_CLUSTER_HTTP_PORT": str(port),
                    "EA_POSTGRES_HTTP_PORT": str(port)}  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def make(self, target: str, *variables: str, timeout: float = 600) -> None:
        run("make", "-s", target, f"IMAGE={self.image}", f"COMPOSE_PROJECT={self.project}",
            f"CONTAINER_ENGINE={self.engine.name}", *variables, env=self.env,
            timeout=timeout)  # fmt: skip

    def up(self, profile: str = "") -> float:
        """``make compose-up``; seconds until the API is ready through the published port."""
        start = time.monotonic()
        # -o: the session's ``image`` (and ``postgres_image``) fixtures built them;
        # compose-up's prerequisites would build again (and run base-images.sh) each time.
        self.make("compose-up", f"PROFILE={profile}", "-o", "image", "-o", "postgres-image")
        api = f"api-{profile}" if profile else "api"
        wait_ready(self.url, timeout_s=180, what=self.engine.logs(self.container(api)))
        return time.monotonic() - start

    def compose(self, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> None:
        run(*self.engine.compose, "-p", self.project, *args, env=self.env, timeout=timeout)

    def wait_exited(self, service: str, timeout_s: float = 120.0) -> float:
        """Until a one-shot service's container exited 0 (fails on another exit code);
        the seconds it took."""
        start = time.monotonic()
        name = self.container(service)
        while True:
            state = self.engine.inspect(name)["State"]
            if not state["Running"] and state.get("Status") in ("exited", "stopped"):
                assert state["ExitCode"] == 0, self.engine.logs(name)
                return time.monotonic() - start
            assert time.monotonic() - start < timeout_s, self.engine.logs(name)
            time.sleep(0.3)

    def container(self, service: str) -> str:
        """The container of a service (docker and podman-compose name them differently)."""
        names = self.engine.labelled("container", f"com.docker.compose.service={service}")
        mine = set(self.engine.labelled("container", f"com.docker.compose.project={self.project}"))
        found = [n for n in names if n in mine]
        return found[0] if found else f"{self.project}_{service}_1"

    def down(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.make("compose-down", "COMPOSE_DOWN_ARGS=-v", timeout=300)
        # Whatever compose left behind (a failed up, an old podman-compose).
        label = f"com.docker.compose.project={self.project}"
        for kind in ("container", "volume", "network"):
            self.engine.remove(kind, self.engine.labelled(kind, label))


@contextlib.contextmanager
def removed_after(engine: Engine) -> Iterator[list[str]]:
    """Volume names a test creates; removed (with its containers) afterwards."""
    volumes: list[str] = []
    try:
        yield volumes
    finally:
        engine.remove("container", engine.labelled("container", f"ea-test={RUN_ID}"))
        engine.remove("volume", volumes)
