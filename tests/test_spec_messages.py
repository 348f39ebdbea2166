"""Every error text the query, funnel and retention specs can give a client is rendered:
no ``{name!r}`` or other ``{placeholder}`` left in a message (pydantic's custom errors
format ``{name}`` from their context, but not ``{name!r}``: issue 21, item 3).

The walk is systematic: every error code ``spec.py`` raises (found in its source, so a new
one cannot be forgotten) must be produced by one of the bad inputs below, and every field
of the three models is also given values of the wrong type, size and shape.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from event_analytics.analytics import spec
from event_analytics.analytics.spec import FunnelSpec, QuerySpec, RetentionSpec

PLACEHOLDER = re.compile(r"\{[^{}]*\}")
CONVERTED = re.compile(r"\{[A-Za-z_][A-Za-z_0-9]*![rsa]\}")
RANGE = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}
STEP = {"event_type": "signup"}
QUERY: dict[str, Any] = {"date_range": "7d", "metrics": ["events"]}
FUNNEL: dict[str, Any] = RANGE | {"steps": [STEP, {"event_type": "purchase"}]}
RETENTION: dict[str, Any] = RANGE | {"cohort_event": STEP, "return_event": STEP}


def _filters(*filters: Any) -> dict[str, Any]:
    return QUERY | {"filters": list(filters)}


def _where(*filters: Any) -> dict[str, Any]:
    return FUNNEL | {"steps": [STEP | {"where": list(filters)}, STEP]}


def _nested(depth: int) -> Any:
    f: Any = ["is", "event_type", ["x"]]
    for _ in range(depth):
        f = ["not", f]
    return f


# (model, body): each one is refused; together they reach every code spec.py raises.
BAD: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (QuerySpec, QUERY | {"filters": "not a list"}),  # invalid_filters
    (QuerySpec, _filters(*[["is", "event_type", ["x"]]] * (spec.MAX_FILTERS + 1))),  # too_long
    (FunnelSpec, _where(*[["is", "plan", ["x"]]] * (spec.MAX_FILTERS + 1))),  # too_long
    (QuerySpec, _filters(["is", 5, ["x"]])),  # invalid_field
    (QuerySpec, _filters(["is", "no such field", ["x"]])),  # unknown_field
    (FunnelSpec, _where(["is", "-bad", ["x"]])),  # unknown_field, bare names
    (QuerySpec, _filters(["is", "event_type", [1.5]])),  # invalid_filter_value
    (QuerySpec, _filters(_nested(spec.MAX_FILTER_DEPTH + 1))),  # filter_too_deep
    (QuerySpec, _filters("not a list")),  # invalid_filter
    (QuerySpec, _filters(["is", "event_type", []])),  # invalid_filter, no values
    (QuerySpec, _filters(["or", []])),  # invalid_filter... via unknown_operator
    (QuerySpec, _filters(["like", "event_type", ["x"]])),  # unknown_operator
    (QuerySpec, _filters(["matches", "page_url", ["(unclosed"]])),  # invalid_regex
    (FunnelSpec, _where(["matches", "plan", ["[z-a]"]])),  # invalid_regex in a step
    (FunnelSpec, FUNNEL | {"steps": [STEP | {"page_url": ""}, STEP]}),  # invalid_page_url
    (FunnelSpec, FUNNEL | {"steps": [STEP | {"page_url": 5}, STEP]}),  # invalid_page_url
    (QuerySpec, QUERY | {"date_range": "2d"}),  # invalid_date_range, unknown shorthand
    (QuerySpec, QUERY | {"date_range": ["2026-11-01T00:00:00Z"]}),  # invalid_date_range
    (QuerySpec, QUERY | {"date_range": ["yesterday", "today"]}),  # invalid_timestamp
    (QuerySpec, QUERY | {"date_range": ["1960-01-01T00:00:00Z", "1961-01-01T00:00:00Z"]}),
    (FunnelSpec, FUNNEL | {"from": "1969-12-31T00:00:00Z"}),  # out_of_range
    (FunnelSpec, FUNNEL | {"from": "0001-01-01T00:00:00+01:00"}),  # out_of_range (overflow)
    (RetentionSpec, RETENTION | {"to": "2026-10-01T00:00:00Z"}),  # empty_range
    (QuerySpec, QUERY | {"date_range": ["2024-01-01T00:00:00Z", "2026-01-01T00:00:00Z"]}),
    (RetentionSpec, RETENTION | {"period": "hour", "to": "2026-12-01T00:00:00Z"}),  # cohorts
    (QuerySpec, QUERY | {"dimensions": ["user_id"]}),  # unknown_dimension
    (QuerySpec, QUERY | {"dimensions": ["no such dimension"]}),  # unknown_dimension
    (QuerySpec, QUERY | {"dimensions": ["event_type", "event_type"]}),  # duplicate_dimension
    (QuerySpec, QUERY | {"dimensions": ["time:day", "time:hour"]}),  # duplicate_dimension
    (QuerySpec, QUERY | {"order_by": [["visitors", "desc"]]}),  # invalid_order_by
    (QuerySpec, QUERY | {"metrics": ["events", "events"]}),  # duplicate_metric
    (FunnelSpec, FUNNEL | {"breakdown": "no such field"}),  # unknown_field (breakdown)
]

# Values of the wrong type, size or shape, for every field of every model.
WRONG = [None, 0, -1, 10**30, 1.5, True, "", "x" * 5000, [], [1], {}, {"a": 1}]


def _codes_in_spec() -> set[str]:
    """The first argument of every ``_invalid(...)`` call in spec.py."""
    tree = ast.parse(inspect.getsource(spec))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_invalid"
        and isinstance(node.args[0], ast.Constant)
    }


def _errors(model: type[BaseModel], body: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(body)
    return raised.value.errors()  # type: ignore[return-value]


def _unrendered(errors: list[dict[str, Any]]) -> list[str]:
    return [e["msg"] for e in errors if PLACEHOLDER.search(e["msg"])]


def test_every_code_of_the_specs_is_reached_and_rendered() -> None:
    reached: set[str] = set()
    unrendered: list[str] = []
    for model, body in BAD:
        errors = _errors(model, body)
        reached |= {e["type"] for e in errors}
        unrendered += _unrendered(errors)
    assert not unrendered, unrendered
    missing = _codes_in_spec() - reached
    assert not missing, f"add a bad input reaching: {sorted(missing)}"


def test_the_messages_name_what_was_sent() -> None:
    """Rendered, not just stripped: the value sent and the bound appear in the text."""
    (dimension,) = _errors(QuerySpec, QUERY | {"dimensions": ["bogus"]})
    assert dimension["msg"].startswith("unknown dimension 'bogus': use event_type"), dimension
    (operator,) = _errors(QuerySpec, _filters(["like", "event_type", ["x"]]))
    assert operator["msg"].startswith("unknown filter operator 'like'"), operator
    (order,) = _errors(QuerySpec, QUERY | {"order_by": [["visitors", "desc"]]})
    assert order["msg"].startswith("order_by 'visitors' is neither"), order
    (deep,) = _errors(QuerySpec, _filters(_nested(spec.MAX_FILTER_DEPTH + 1)))
    assert deep["msg"] == f"filters nest at most {spec.MAX_FILTER_DEPTH} levels", deep


@pytest.mark.parametrize(
    ("model", "base"), [(QuerySpec, QUERY), (FunnelSpec, FUNNEL), (RetentionSpec, RETENTION)]
)
def test_wrong_values_in_every_field_give_rendered_messages(
    model: type[BaseModel], base: dict[str, Any]
) -> None:
    model.model_validate(base)  # the base is valid: each refusal below is the field's
    names = [f.alias or name for name, f in model.model_fields.items()]
    unrendered: list[str] = []
    refused = 0
    for name in [*names, "unexpected_field"]:
        for value in WRONG:
            try:
                model.model_validate(base | {name: value})
            except ValidationError as exc:
                refused += 1
                unrendered += _unrendered(exc.errors())  # type: ignore[arg-type]
    assert not unrendered, unrendered
    assert refused >= len(names) * len(WRONG) // 2


def test_no_error_template_in_src_uses_a_conversion_pydantic_does_not_format() -> None:
    """pydantic's custom errors fill ``{name}`` only: a ``{name!r}`` in a
    template that is not an f-string is sent to the client as it is (spec.py renders its
    own with ``_invalid``; nothing else in src/ may hold one)."""
    src = Path(spec.__file__).parents[1]
    found = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text())
        in_fstrings = {
            id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in in_fstrings
                and CONVERTED.search(node.value)
                and path.name != "spec.py"
            ):
                found.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not found, found
