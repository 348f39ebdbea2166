"""Schemathesis against the real service's /openapi.json: no 5xx, answers as documented.

Bounded: 30 examples per operation, on a single node and on the cluster. Timestamps
generated from the schema are mostly outside the acceptance window, so most events come
back 422; the point is that no input, valid or not, finds a 5xx or an answer the schema
does not describe.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from benchmarks.procs import EngineProcess
from event_analytics.api.app import create_app
from event_analytics.config import Settings
from tests.backends import Backend
from tests.cluster import ClusterProcess
from tests.servers import ServiceProcess, engine_binary, stopped_after

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["valkey", "cluster"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service on a fresh Valkey, or on the session's cluster (own key prefix)."""
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    if request.param == "cluster":
        cluster: ClusterProcess = request.getfixturevalue("cluster")
        backend = Backend("cluster", cluster, prefix="fz:")
        with stopped_after(ServiceProcess(data_dir, env=backend.env)) as svc:
            yield svc
        return
    binary = engine_binary("valkey")
    assert binary is not None
    engine = EngineProcess(binary, tmp_path_factory.mktemp("fuzz-engine"))
    engine.start()
    with stopped_after(ServiceProcess(data_dir, env={"REDIS_URL": engine.url})) as svc:
        yield svc
    engine.stop()


def _operations() -> list[tuple[str, str]]:
    # Collected from the app's own schema (no server needed); each test then fuzzes the
    # operation as the running service's /openapi.json describes it.
    paths = create_app(Settings()).openapi()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops)


@pytest.fixture(scope="module")
def api_schema(fuzzed: ServiceProcess) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize(("method", "path"), _operations())
def test_api_conforms(
    api_schema: BaseSchema, fuzzed: ServiceProcess, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        case.call_and_validate(base_url=fuzzed.url, checks=CHECKS, timeout=10)

    run()
