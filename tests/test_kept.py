"""tests.kept: what the session's fixtures lend is started once, stopped when idle past its
bound or at the end, the latest started first."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest

from tests.kept import Kept


def _starter(name: str, log: list[str]) -> Callable[[contextlib.ExitStack], str]:
    def start(stack: contextlib.ExitStack) -> str:
        log.append(f"start {name}")
        stack.callback(log.append, f"stop {name}")
        return name

    return start


def test_started_once_and_stopped_latest_first() -> None:
    log: list[str] = []
    kept = Kept()
    assert kept.get("engine", _starter("engine", log), None) == "engine"
    assert kept.get("service", _starter("service", log), 60.0) == "service"
    # Lent again (the engine fixture is set up again at a change of kind): not moved
    # after the service in the order of stops.
    assert kept.get("engine", _starter("engine", log), None) == "engine"
    assert kept.get("service", _starter("service", log), 60.0) == "service"
    kept.expire()  # nothing idle yet
    kept.close()
    assert log == ["start engine", "start service", "stop service", "stop engine"]


def test_idle_past_its_bound_is_stopped_and_started_again() -> None:
    log: list[str] = []
    kept = Kept()
    kept.get("engine", _starter("engine", log), None)
    kept.get("service", _starter("service", log), 0.05)
    time.sleep(0.1)
    kept.expire()
    assert log == ["start engine", "start service", "stop service"]
    kept.get("service", _starter("service", log), 0.05)
    kept.close()
    assert log[3:] == ["start service", "stop service", "stop engine"]


def test_a_failed_start_stops_what_it_started_and_keeps_nothing() -> None:
    log: list[str] = []
    kept = Kept()

    def broken(stack: contextlib.ExitStack) -> str:
        stack.callback(log.append, "stop half")
        raise RuntimeError("not ready")

    with pytest.raises(RuntimeError):
        kept.get("service", broken, None)
    assert log == ["stop half"]
    assert kept.get("service", _starter("service", log), None) == "service"
    kept.close()
    assert log == ["stop half", "start service", "stop service"]
