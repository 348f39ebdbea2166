"""Fixtures: private engines (bundled Valkey, Debian's redis-server) and the real service."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.servers import EngineProcess, ServiceProcess, engine_binary, free_port

ENGINES = ["valkey", "redis"]


def _binary_or_skip(kind: str) -> str:
    binary = engine_binary(kind)
    if binary is None:
        # CI installs redis-server, so there a missing engine is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"{kind} server binary missing in CI")
        pytest.skip(f"{kind} server not installed (apt-get install redis-server)")
    return binary


@pytest.fixture(scope="session", params=ENGINES)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineProcess]:
    """One engine per kind for the whole session (tests flush it through `redis_url`)."""
    kind = request.param
    proc = EngineProcess(_binary_or_skip(kind), tmp_path_factory.mktemp(f"engine-{kind}"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """A private bundled Valkey for one test module (its tests may reconfigure it)."""
    binary = engine_binary("valkey")
    assert binary is not None
    proc = EngineProcess(binary, tmp_path_factory.mktemp("module-engine"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(engine: EngineProcess) -> str:
    """The engine's URL, emptied before the test."""
    client = redis.Redis.from_url(engine.url)
    client.flushall()
    client.close()
    return engine.url


@pytest.fixture(scope="session")
def service(
    engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The real service on the session's engine (REDIS_URL), over HTTP."""
    data_dir = tmp_path_factory.mktemp("service")
    svc = ServiceProcess(data_dir / "data", env={"REDIS_URL": engine.url})
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def two_workers(engine: EngineProcess, redis_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The real service with two uvicorn worker processes, on the emptied engine."""
    svc = ServiceProcess(tmp_path / "data", env={"REDIS_URL": redis_url}, workers=2)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def live(service: ServiceProcess, redis_url: str) -> ServiceProcess:
    """The service, with its engine emptied before the test."""
    return service


@pytest.fixture(scope="session")
def engine_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service pointed at a port where no engine listens: alive, never ready."""
    data_dir = tmp_path_factory.mktemp("engine-down")
    url = f"redis://127.0.0.1:{free_port()}/0"
    svc = ServiceProcess(data_dir / "data", env={"REDIS_URL": url})
    svc.start(wait=False)
    svc.wait_alive()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def exact_service(
    engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The real service with EA_UNIQUES=exact: hour and day unique users from sets."""
    data_dir = tmp_path_factory.mktemp("service-exact")
    svc = ServiceProcess(data_dir / "data", env={"REDIS_URL": engine.url, "EA_UNIQUES": "exact"})
    svc.start()
    yield svc
    svc.stop()
