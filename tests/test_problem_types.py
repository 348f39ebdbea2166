"""One problem type, one status and one title: a client that keys on ``type`` (as RFC
9457 says it should) must never see the same slug with two titles or statuses, whether
the answer came from a domain error (``errors.py``'s classes, wherever they are defined)
or from a refusal the API writes itself (``api/problems.py``'s REFUSALS)."""

from __future__ import annotations

import importlib
import pkgutil

import event_analytics
from event_analytics.api import problems
from event_analytics.errors import EventAnalyticsError


def _every_error_class() -> list[type[EventAnalyticsError]]:
    # Every module, so that an error class defined anywhere is a known subclass.
    for info in pkgutil.walk_packages(event_analytics.__path__, "event_analytics."):
        if not info.name.endswith("__main__"):  # it runs the command line
            importlib.import_module(info.name)
    found: list[type[EventAnalyticsError]] = []
    todo = [EventAnalyticsError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_each_problem_type_has_one_status_and_one_title() -> None:
    seen: dict[str, set[tuple[int, str]]] = {}
    for slug, (status, title) in problems.REFUSALS.items():
        seen.setdefault(slug, set()).add((status, title))
    classes = _every_error_class()
    assert len(classes) > 15  # the walk found the error classes, not just the base
    for cls in classes:
        seen.setdefault(cls.slug, set()).add((cls.status, cls.title))
    seen.setdefault("internal-error", set()).add(
        (problems.internal_error().status_code, "Internal server error")
    )
    twice = {slug: sorted(facts) for slug, facts in seen.items() if len(facts) > 1}
    assert twice == {}
