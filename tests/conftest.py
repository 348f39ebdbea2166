"""Fixtures: private engines (bundled Valkey, Debian's redis-server, a 3+3 Valkey
Cluster) and the real service.

Every fixture built on ``engine`` runs its tests on each engine: a test that touches
storage runs on the cluster too, unless it pins ``engine`` (parametrize indirect) and
says why.
"""

from __future__ import annotations

import contextlib
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
from tests.kept import Kept
from tests.servers import SERVICE_PREFIX, ServiceProcess, engine_binary, stopped_after

ENGINES = ["valkey", "redis", "cluster"]

# A kept service or in-process app unused this long is stopped (tests.kept: idle, a
# service's tree costs about its start's CPU every minute).
IDLE_S = 60.0


@pytest.fixture(scope="session")
def kept() -> Iterator[Kept]:
    """The engines, services and in-process apps lent to tests (tests.kept)."""
    pool = Kept()
    yield pool
    pool.close()


@pytest.fixture(autouse=True)
def _expire_kept(kept: Kept) -> Iterator[None]:
    yield
    kept.expire()


def _binary_or_skip(kind: str) -> str:
    binary = engine_binary(kind)
    if binary is None:
        # CI installs redis-server, so there a missing engine is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"{kind} server binary missing in CI")
        pytest.skip(f"{kind} server not installed (apt-get install redis-server)")
    return binary


@pytest.fixture(scope="session")
def cluster(kept: Kept, tmp_path_factory: pytest.TempPathFactory) -> ClusterProcess:
    """One 3+3 cluster for the whole session (starting one takes seconds); tests flush it."""

    def start(stack: contextlib.ExitStack) -> ClusterProcess:
        proc = start_cluster(tmp_path_factory.mktemp("cluster"))
        stack.callback(proc.stop)
        return proc

    return kept.get("cluster", start, idle_s=None)


@pytest.fixture(scope="session", params=ENGINES)
def engine(
    request: pytest.FixtureRequest, kept: Kept, tmp_path_factory: pytest.TempPathFactory
) -> Backend:
    """One engine per kind for the whole session (tests flush it through ``db``), kept
    (tests.kept) while pytest sets this fixture up again at each change of kind."""
    kind = request.param
    if kind == "cluster":
        return Backend(kind, request.getfixturevalue("cluster"))
    binary = _binary_or_skip(kind)

    def start(stack: contextlib.ExitStack) -> EngineProcess:
        proc = EngineProcess(binary, tmp_path_factory.mktemp(f"engine-{kind}"))
        proc.start()
        stack.callback(proc.stop)
        return proc

    return Backend(kind, kept.get(("engine", kind), start, idle_s=None))


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


@pytest.fixture
def service(
    engine: Backend, kept: Kept, tmp_path_factory: pytest.TempPathFactory
) -> ServiceProcess:
    """The real service on the session's engine (REDIS_URL or REDIS_CLUSTER_URL), over HTTP,
    under its own key prefix (``SERVICE_PREFIX``; ``service_keys`` reads them): one per
    engine kind, lent to every test that asks (tests.kept)."""

    def start(stack: contextlib.ExitStack) -> ServiceProcess:
        data_dir = tmp_path_factory.mktemp(f"service-{engine.kind}")
        env = engine.env | {"EA_KEY_PREFIX": SERVICE_PREFIX}
        return stack.enter_context(stopped_after(ServiceProcess(data_dir / "data", env=env)))

    return kept.get(("service", engine.kind), start, IDLE_S)


@pytest.fixture
def service_keys(db: Backend) -> Backend:
    """The emptied engine, seen under the ``service``'s key prefix."""
    return Backend(db.kind, db.engine, prefix=SERVICE_PREFIX)


@pytest.fixture
def two_workers(db: Backend, tmp_path: Path) -> Iterator[ServiceProcess]:
    """The real service with two uvicorn worker processes, on the emptied engine."""
    with stopped_after(ServiceProcess(tmp_path / "data", env=db.env, workers=2)) as svc:
        yield svc


@pytest.fixture
def live(service: ServiceProcess, db: Backend) -> ServiceProcess:
    """The service, with its engine emptied before the test."""
    return service


@pytest.fixture
def app_service(
    engine: Backend, kept: Kept, tmp_path_factory: pytest.TempPathFactory
) -> InProcessService:
    """The app in this process on the session's engine (tests.inproc): for HTTP semantics.

    Its key prefix is the engine's ("ea:", what ``db`` reads), and it runs no archiver:
    a test that reads its streams finds them as the app wrote them.
    """

    def start(stack: contextlib.ExitStack) -> InProcessService:
        data_dir = tmp_path_factory.mktemp(f"inproc-{engine.kind}") / "data"
        settings = engine.settings(data_dir=data_dir, key_prefix=engine.prefix)
        return stack.enter_context(in_process(settings, engine.env))

    return kept.get(("app_service", engine.kind), start, IDLE_S)


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


@pytest.fixture(params=["single", "cluster"])
def engine_down(
    request: pytest.FixtureRequest, kept: Kept, tmp_path_factory: pytest.TempPathFactory
) -> ServiceProcess:
    """The service pointed at ports where no engine listens: alive, never ready; one of
    each, lent to every test that asks (tests.kept).

    REDIS_URL of one node, or a REDIS_CLUSTER_URL of three seed nodes.
    """
    kind = request.param

    def start(stack: contextlib.ExitStack) -> ServiceProcess:
        data_dir = tmp_path_factory.mktemp(f"engine-down-{kind}")
        if kind == "cluster":
            seeds = ",".join(f"127.0.0.1:{port}" for port in free_ports(3))
            env = {"REDIS_CLUSTER_URL": f"redis://{seeds}"}
        else:
            env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        svc = ServiceProcess(data_dir / "data", env=env)
        svc.start(wait=False)
        stack.callback(svc.stop)
        svc.wait_alive()
        return svc

    return kept.get(("engine_down", kind), start, IDLE_S)


@pytest.fixture
def exact_app(
    engine: Backend, kept: Kept, tmp_path_factory: pytest.TempPathFactory
) -> InProcessService:
    """The app in this process with EA_UNIQUES=exact (hour and day unique users from sets),
    on the session's engine with ``app_service``'s prefix, for the counter reads.

    No archiver, as ``app_service``: when an archiver ran here beside a service on the
    same prefix, it took a share of the streams into its own archive, so the service's
    tests waited in vain for their events in the files.
    """

    def start(stack: contextlib.ExitStack) -> InProcessService:
        data_dir = tmp_path_factory.mktemp(f"inproc-exact-{engine.kind}") / "data"
        settings = engine.settings(data_dir=data_dir, key_prefix=engine.prefix, uniques="exact")
        return stack.enter_context(in_process(settings, engine.env | {"EA_UNIQUES": "exact"}))

    return kept.get(("exact_app", engine.kind), start, IDLE_S)


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
