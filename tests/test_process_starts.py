"""What a process of ours costs to start (issue 22: the suite starts the service and runs
the commands hundreds of times, and its time is CPU).

A module a process kind never uses is not imported by it: the API app loads no PostgreSQL
client (only the delivery, retention and erasure processes talk to PostgreSQL), a
command's parser loads neither the app nor DuckDB. Each check runs in a fresh
interpreter: the test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# (module a process kind imports, heavy modules it must not import): psycopg (with its
# binary part) ~0.1-0.2 CPU-s a process, FastAPI ~0.4, DuckDB and aiohttp ~0.1 each.
IMPORTS = [
    ("event_analytics.api.app", ("psycopg",)),
    ("event_analytics.cli", ("psycopg", "duckdb", "fastapi", "aiohttp", "uvicorn")),
    ("event_analytics.api.metrics", ("psycopg",)),
    ("event_analytics.api.persistent", ("psycopg",)),
    ("event_analytics.importing", ("psycopg",)),
]


@pytest.mark.parametrize(("module", "absent"), IMPORTS)
def test_a_process_kind_imports_no_module_it_never_uses(module: str, absent: tuple[str]) -> None:
    probe = f"import sys, {module}; print(sorted(set({list(absent)!r}) & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"
