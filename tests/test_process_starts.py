"""What a process of ours costs to start (issue 22: the suite starts the service and runs
the commands hundreds of times, and its time is CPU).

``serve`` forks the children that run our own code (supervisor.py) once it has imported
the app, instead of each importing it again; a restart execs. And a module a process kind
never uses is not imported by it: the API app loads no PostgreSQL client (only the
delivery, retention and erasure processes talk to PostgreSQL), a command's parser loads
neither the app nor DuckDB. Each check runs in a fresh interpreter: the test process has
imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend
from tests.helpers import wait_for
from tests.inproc import in_process

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


# Run in a fresh interpreter: a Supervised child with an entry, started from a process with
# one thread (forked), then again with a second thread alive (exec'd), then restarted
# after a kill (exec'd, on the watcher thread). Prints what each child saw, as JSON.
_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from event_analytics import supervisor

    out = Path(sys.argv[1])
    supervisor.prepare_titles()
    os.environ["EA_PROBE_PARENT"] = "parent only"

    def entry() -> int:
        seen = {
            "forked": True,
            "pid": os.getpid(),
            "sid": os.getsid(0),
            "env": os.environ.get("EA_PROBE_CHILD"),
            "parent_env": os.environ.get("EA_PROBE_PARENT"),
            "stdin": os.readlink("/proc/self/fd/0"),
            "cmdline": Path("/proc/self/cmdline").read_bytes().decode(),
            "argv": sys.argv,
        }
        (out / f"{os.getpid()}.json").write_text(json.dumps(seen))
        return 3

    # The exec'd twin: the same command, run as a program.
    twin = [sys.executable, "-c", (
        "import json, os, sys; from pathlib import Path; "
        "Path(sys.argv[1], f'{os.getpid()}.json').write_text(json.dumps("
        "{'forked': False, 'pid': os.getpid(), 'sid': os.getsid(0)}))"
    ), str(out)]
    env = {**os.environ, "EA_PROBE_CHILD": "child"}
    del env["EA_PROBE_PARENT"]

    first = supervisor.Supervised("probe", twin, env=env, entry=entry)
    first.start(watch=False)
    assert first.proc is not None
    code = first.proc.wait(timeout=30)

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    second = supervisor.Supervised("probe", twin, env=env, entry=entry)
    second.start(watch=False)
    assert second.proc is not None
    second.proc.wait(timeout=30)
    stop.set()
    thread.join()

    # Restarted on its watcher thread when it exits: exec'd, though this process may fork.
    third = supervisor.Supervised("probe", twin, env=env, entry=entry)
    third.start(watch=True)
    deadline = time.monotonic() + 30
    while third.restarts < 1:
        assert time.monotonic() < deadline, "no restart"
        time.sleep(0.05)
    restarted = third.proc
    while not (out / f"{restarted.pid}.json").exists():
        assert time.monotonic() < deadline, "the restarted child wrote nothing"
        time.sleep(0.05)
    third.stop()
    print(json.dumps({
        "first": [first.proc.pid, code, type(first.proc).__name__],
        "second": [second.proc.pid, type(second.proc).__name__],
        "third": [restarted.pid, type(restarted).__name__],
        "sid": os.getsid(0),
    }))
    """
)


def test_serve_forks_its_children_only_while_it_has_one_thread(tmp_path: Path) -> None:
    out = tmp_path / "seen"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    seen = {int(p.stem): json.loads(p.read_text()) for p in out.glob("*.json")}

    first_pid, code, kind = result["first"]
    assert kind == "Forked" and code == 3, "one thread: forked, and its entry's exit code"
    child = seen[first_pid]
    assert child["forked"] is True
    assert child["sid"] == first_pid != result["sid"], "a session of its own, as exec'd"
    assert child["env"] == "child" and child["parent_env"] is None, "the child's environment"
    assert child["stdin"] == "/dev/null"
    # What ps shows: the command its exec'd twin runs, not the parent's.
    assert child["cmdline"].rstrip("\0").startswith(f"{sys.executable} -c import json")
    assert child["argv"][0] == sys.executable

    second_pid, kind = result["second"]
    assert kind == "Popen" and seen[second_pid]["forked"] is False, "two threads: exec'd"
    third_pid, kind = result["third"]
    assert kind == "Popen" and seen[third_pid]["forked"] is False, "a restart: exec'd"
    assert seen[third_pid]["sid"] == third_pid


@pytest.mark.parametrize("engine", ["valkey"], indirect=True)  # the app's start, not the engine
@pytest.mark.parametrize("query_role", [False, True])
def test_only_a_process_that_takes_events_loads_the_enrichment_data(
    engine: Backend, tmp_path: Path, query_role: bool
) -> None:
    """A worker loads the country database and the User-Agent rules at start (beside it);
    a query process never enriches an event (it answers forwarded reads) and loads none."""
    settings = engine.settings(
        data_dir=tmp_path / "data", key_prefix="warm:", query_role=query_role
    )
    with in_process(settings, engine.env) as svc:
        app: Any = svc.app
        wait_for(app.state.warming.done, 60)
        compat = app.state.compat
        enrichers = {compat.segment_enricher, compat.browser_enricher} - {None}
        assert enrichers, "enrichment is on by default"
        assert {e.countries.loaded for e in enrichers} == {not query_role}
