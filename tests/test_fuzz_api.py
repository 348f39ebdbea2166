"""Schemathesis against the app's /openapi.json: no 5xx, answers as documented.

The app runs in this process on a real engine: schemathesis calls it through its ASGI
transport and runs its lifespan (startup, the engine connections, the batcher) as
uvicorn would. What lies below the app (uvicorn's protocol: head limits, slow bodies) is
tested over sockets in test_hardening.py and test_api.py.

Bounded: 30 examples per operation, on a single node and on the cluster. Timestamps
generated from the schema are mostly outside the acceptance window, so most events come
back 422; the point is that no input, valid or not, finds a 5xx or an answer the schema
does not describe.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
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
from tests.servers import engine_binary

# In-process, yet ~1,500 requests with schema checks: out of make test-fast.
pytestmark = pytest.mark.slow


def _app(backend: Backend, data_dir: Path, **settings: Any) -> Iterator[FastAPI]:
    app = create_app(backend.settings(data_dir=data_dir, key_prefix=backend.prefix, **settings))
    try:
        yield app
    finally:
        # Schemathesis started the app's lifespan on its first call; end it here.
        asgi.shutdown_lifespans()
        gc.unfreeze()  # what the lifespan froze (gc.freeze) is collectable again


@pytest.fixture(scope="module", params=["valkey", "cluster"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    """The app on a fresh Valkey, or on the session's cluster (own key prefix)."""
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    if request.param == "cluster":
        cluster: ClusterProcess = request.getfixturevalue("cluster")
        yield from _app(Backend("cluster", cluster, prefix="fz:"), data_dir)
        return
    binary = engine_binary("valkey")
    assert binary is not None
    engine = EngineProcess(binary, tmp_path_factory.mktemp("fuzz-engine"))
    engine.start()
    try:
        yield from _app(Backend("valkey", engine), data_dir)
    finally:
        engine.stop()


@functools.cache
def _operations() -> list[tuple[str, str]]:
    # Collected from the app's own schema (no server needed); each test then fuzzes the
    # operation as the app's /openapi.json describes it. Built once: both tests'
    # parameters come from it, and every xdist worker collects this module.
    paths = create_app(Settings()).openapi()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() for method in ops)


@pytest.fixture(scope="module")
def api_schema(fuzzed: FastAPI) -> BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz(operation: Any, max_examples: int, headers: dict[str, str] | None = None) -> None:
    """Valid and invalid requests for ``operation``, each answered as documented."""
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        if headers:
            case.headers = {**(case.headers or {}), **headers}
        case.call_and_validate(checks=CHECKS, timeout=10)

    run()


@pytest.mark.parametrize(("method", "path"), _operations())
def test_api_conforms(api_schema: BaseSchema, method: str, path: str) -> None:
    fuzz(api_schema[path][method], 30)


ADMIN_KEY = "fuzz-admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def admin_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseSchema]:
    """The app with an admin key set, on a fresh Valkey: the admin routes past the guard
    (the other fuzzing meets them closed). No erasure worker runs here: jobs only queue,
    up to the queue's limit (its 503 is documented too)."""
    binary = engine_binary("valkey")
    assert binary is not None
    engine = EngineProcess(binary, tmp_path_factory.mktemp("fuzz-admin-engine"))
    engine.start()
    try:
        data_dir = tmp_path_factory.mktemp("fuzz-admin") / "data"
        for app in _app(Backend("valkey", engine), data_dir, admin_keys=(ADMIN_KEY,)):
            yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        engine.stop()


@pytest.mark.parametrize(
    ("method", "path"), [(m, p) for m, p in _operations() if p.startswith("/api/v1/admin/")]
)
def test_admin_routes_conform_with_an_admin_key(
    admin_schema: BaseSchema, method: str, path: str
) -> None:
    fuzz(admin_schema[path][method], 60, {"Authorization": f"Bearer {ADMIN_KEY}"})
