"""compose.yaml's PostgreSQL profile, checked without a container engine: the database
service is healthy-gated, the API's EA_POSTGRES_URL names it with its own user, password
and database, and ``make compose-up PROFILE=postgres`` starts that API. (Running it would
need a PostgreSQL image: no registry is reachable here and the local base images have
none; tests/test_containers.py runs the other profiles for real.)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def _defaults(text: str) -> str:
    """``${NAME:-default}`` -> default, as compose interpolates with NAME unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def test_the_postgres_profile_wires_the_api_to_its_database() -> None:
    db, api = SERVICES["postgres"], SERVICES["api-postgres"]
    assert db["profiles"] == ["postgres"] and api["profiles"] == ["postgres"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert api["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "ports" not in db  # reachable on the compose network only
    env = {k: _defaults(str(v)) for k, v in db["environment"].items()}
    url = conninfo_to_dict(_defaults(api["environment"]["EA_POSTGRES_URL"]))
    assert (url["host"], url["port"], url["user"], url["password"], url["dbname"]) == (
        "postgres", "5432", env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"],
    )  # fmt: skip
    # Data on volumes of its own: the database's and the archive's.
    assert {v.split(":")[0] for v in db["volumes"] + api["volumes"]} <= set(COMPOSE["volumes"])
    assert set(api["volumes"]).isdisjoint(SERVICES["api"]["volumes"])
    # Beside the plain API on the same Redis, under another key prefix (two archivers
    # of one stream would split its events between two archives).
    assert api["environment"]["REDIS_URL"] == SERVICES["api"]["environment"]["REDIS_URL"]
    assert api["environment"].get("EA_KEY_PREFIX", "ea:") != SERVICES["api"]["environment"].get(
        "EA_KEY_PREFIX", "ea:"
    )


# Under `make test` the suite inherits MAKELEVEL and MAKEFLAGS, and a make run from it
# would print "make[1]: Leaving directory" after the plan: run it as from a shell.
_OUTSIDE_MAKE = {
    k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
}


def test_make_compose_up_names_the_profiles_service() -> None:
    for profile, service in (("postgres", "api-postgres"), ("cluster", "api-cluster"), ("", "api")):
        out = subprocess.run(
            ["make", "-n", "compose-up", f"PROFILE={profile}", "CONTAINER_ENGINE=docker"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True, env=_OUTSIDE_MAKE,
        ).stdout  # fmt: skip
        assert out.rstrip().endswith(f"up -d --no-build {service}"), out
