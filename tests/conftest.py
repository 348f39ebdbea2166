"""Fixtures: private engines (bundled Valkey, Debian's redis-server, a 3+3 Valkey
Cluster) and the real service.

Every fixture built on ``engine`` runs its tests on each engine: a test that touches
storage runs on the cluster too, unless it pins ``engine`` (parametrize indirect) and
says why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.procs import EngineProcess, free_port, free_ports
from tests import servers
from tests.backends import Backend
from tests.clients import chromium_binary
from tests.cluster import ClusterProcess, start_cluster
from tests.inproc import InProcessService, in_process
from tests.servers import ServiceProcess, engine_binary, stopped_after

ENGINES = ["valkey", "redis", "cluster"]


def _binary_or_skip(kind: str) -> str:
    binary = engine_binary(kind)
    if binary is None:
        # CI installs redis-server, so there a missing engine is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"{kind} server binary missing in CI")
        pytest.skip(f"{kind} server not installed (apt-get install redis-server)")
    return binary


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    """One 3+3 cluster for the whole session (starting one takes seconds); tests flush it."""
    proc = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield proc
    proc.stop()


@pytest.fixture(scope="session", params=ENGINES)
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """One engine per kind for the whole session (tests flush it through ``db``)."""
    kind = request.param
    if kind == "cluster":
        # Not stopped here: pytest may tear this fixture down between groups of tests,
        # and the cluster outlives that (its own session fixture).
        yield Backend(kind, request.getfixturevalue("cluster"))
        return
    proc = EngineProcess(_binary_or_skip(kind), tmp_path_factory.mktemp(f"engine-{kind}"))
    proc.start()
    yield Backend(kind, proc)
    proc.stop()


@pytest.fixture(params=["valkey", "cluster"])
def killable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """An engine the test may kill, hang or restart, with a key prefix of its own.

    A fresh single node of its kind, or the session's cluster, emptied (starting one per
    test would cost seconds each); it is made whole again afterwards.
    """
    kind = request.param
    if kind == "cluster":
        backend = Backend(kind, request.getfixturevalue("cluster"), prefix="own:")
        backend.flush()
        yield backend
        backend.start()  # any killed node restarted, the cluster ok again
        return
    proc = EngineProcess(_binary_or_skip(kind), tmp_path / f"engine-{kind}")
    proc.start()
    yield Backend(kind, proc, prefix="own:")
    proc.stop()


@pytest.fixture
def db(engine: Backend) -> Backend:
    """The engine, emptied before the test."""
    engine.flush()
    return engine


@pytest.fixture(scope="session")
def service(engine: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The real service on the session's engine (REDIS_URL or REDIS_CLUSTER_URL), over HTTP."""
    data_dir = tmp_path_factory.mktemp(f"service-{engine.kind}")
    with stopped_after(ServiceProcess(data_dir / "data", env=engine.env)) as svc:
        yield svc


@pytest.fixture
def two_workers(db: Backend, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The real service with two uvicorn worker processes, on the emptied engine."""
    with stopped_after(ServiceProcess(tmp_path / "data", env=db.env, workers=2)) as svc:
        yield svc


@pytest.fixture
def live(service: ServiceProcess, db: Backend) -> ServiceProcess:
    """The service, with its engine emptied before the test."""
    return service


@pytest.fixture(scope="session")
def app_service(
    engine: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The app in this process on the session's engine (tests.inproc): for HTTP semantics.

    Its key prefix is the ``service``'s, and it runs no archiver: only the ``service``'s
    archiver reads the streams.
    """
    data_dir = tmp_path_factory.mktemp(f"inproc-{engine.kind}") / "data"
    settings = engine.settings(data_dir=data_dir, key_prefix=engine.prefix)
    with in_process(settings, engine.env) as svc:
        yield svc


@pytest.fixture
def api(app_service: InProcessService, db: Backend) -> InProcessService:
    """The in-process app, with its engine emptied before the test (``live``'s twin)."""
    return app_service


# Fixtures that start the service as a process: a test using one is marked slow.
SERVICE_FIXTURES = frozenset({"service", "live", "two_workers", "engine_down"})


# Modules whose tests run the CLI as processes on every engine (import, expiry, export,
# the archive's SQL), or the large Hypothesis models: minutes of the suite between them
# (--durations), so out of make test-fast (issue 22: the edit-run loop in ~2 minutes).
HEAVY_MODULES = frozenset({
    "test_expiry", "test_import", "test_import_window", "test_export", "test_archive_cli",
    "test_goals_cli", "test_loadtest", "test_erase_prepass", "test_visits_plans",
    "test_visits_model", "test_copy_schema", "test_import_parallel",
})  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        heavy = item.module is not None and item.module.__name__.rpartition(".")[2] in HEAVY_MODULES
        if heavy or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Only tests marked slow may start the service as a process (ServiceProcess checks):
    ``-m "not slow"`` (make test-fast) runs none."""
    servers.PROCESSES_ALLOWED = item.get_closest_marker("slow") is not None


@pytest.fixture(scope="session", params=["single", "cluster"])
def engine_down(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service pointed at ports where no engine listens: alive, never ready.

    REDIS_URL of one node, or a REDIS_CLUSTER_URL of three seed nodes.
    """
    data_dir = tmp_path_factory.mktemp(f"engine-down-{request.param}")
    if request.param == "cluster":
        seeds = ",".join(f"127.0.0.1:{port}" for port in free_ports(3))
        env = {"REDIS_CLUSTER_URL": f"redis://{seeds}"}
    else:
        env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    svc = ServiceProcess(data_dir / "data", env=env)
    svc.start(wait=False)
    svc.wait_alive()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def exact_app(
    engine: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The app in this process with EA_UNIQUES=exact (hour and day unique users from sets),
    on the session's engine with the ``service``'s prefix, for the counter reads.

    No archiver, as ``app_service``: the ``service``'s archiver must be the only one on
    that prefix. A second one took a share of the streams into its own archive, so later
    tests of ``live`` waited in vain for their events in the files.
    """
    data_dir = tmp_path_factory.mktemp(f"inproc-exact-{engine.kind}") / "data"
    settings = engine.settings(data_dir=data_dir, key_prefix=engine.prefix, uniques="exact")
    with in_process(settings, engine.env | {"EA_UNIQUES": "exact"}) as svc:
        yield svc


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_binary()


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EngineProcess]:
    """A private Valkey of the test's own, which it may reconfigure (CONFIG SET)."""
    proc = EngineProcess(_binary_or_skip("valkey"), tmp_path / "own-valkey")
    proc.start()
    yield proc
    proc.stop()
