"""Goals (pure): the input rules, and the page-pattern matcher as Python and as DuckDB SQL
agreeing on every pattern and path."""

from __future__ import annotations

from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_analytics.errors import InvalidInput
from event_analytics.goals import (
    Goal,
    Kind,
    event_name_of,
    matches,
    new_goal,
    page_regex,
    path_matches,
    sql_condition,
)

DB = duckdb.connect()


def _agree(pattern: str, path: str) -> None:
    """The regular expression and the planner's page-goal SQL (string functions where
    they are the rule) both say what ``path_matches`` says."""
    want = path_matches(pattern, path)
    row = DB.execute("SELECT regexp_full_match(?, ?)", [path, page_regex(pattern)]).fetchone()
    assert row is not None and row[0] is want, page_regex(pattern)
    goal = _goal(Kind.PAGE, pattern)
    sql, params = sql_condition(goal, type_sql="'page_view'", name_sql="''", path_sql="p")
    row = DB.execute(f"SELECT {sql} FROM (SELECT ?::VARCHAR AS p)", [*params, path]).fetchone()
    assert row is not None and row[0] is want, sql


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("/register", "/register", True),
        ("/register", "/register/", False),  # the whole path
        ("/register", "/Register", False),  # case counts
        ("/blog/*", "/blog/a", True),
        ("/blog/*", "/blog/", True),
        ("/blog/*", "/blog/a/b", False),  # * stops at /
        ("/blog/**", "/blog/a/b", True),
        ("/blog/**/edit", "/blog/a/b/edit", True),
        ("/blog/**/edit", "/blog//edit", True),
        ("/p*.html", "/post.html", True),
        ("/p*.html", "/postxhtml", False),  # . is a dot
        ("/a+b(c)?[d]", "/a+b(c)?[d]", True),  # regex syntax is only text
        ("/a+b(c)?[d]", "/aab(c)d", False),
        ("/***", "/x/y", True),
        ("/price$", "/price$", True),
        ("/x\\d", "/x\\d", True),
        ("/x\\d", "/x1", False),
        # LIKE's own wildcards and escape are text in a pattern
        ("/a_b/**", "/aXb/c", False),
        ("/a%b**", "/aXYb", False),
        ("/a\\b/**", "/a\\b/c", True),
        ("/a_*", "/a_x", True),
        ("/a_*", "/abx", False),
        ("/a%", "/a%", True),
    ],
)
def test_page_patterns(pattern: str, path: str, hit: bool) -> None:
    assert path_matches(pattern, path) is hit
    _agree(pattern, path)


PIECES = st.sampled_from(["*", "**", "/", "a", "b", ".", "\\", "(", "[", "|", "$", "^", "?",
                          "+", "{", "}", "-", " ", "\n", "é", "🙂", "%", "_"])  # fmt: skip


@st.composite
def pattern_and_path(draw: st.DrawFn) -> tuple[str, str]:
    """A pattern, and a path made from it (each wildcard filled with any pieces, "/" and
    newlines included), sometimes changed after: mostly near-matches, where the two
    translations could disagree, not random pairs that never match."""
    pieces = draw(st.lists(PIECES, max_size=8))
    path = "".join(
        "".join(draw(st.lists(PIECES, max_size=3))) if piece in ("*", "**") else piece
        for piece in pieces
    )
    if draw(st.booleans()):
        path = "".join(draw(st.permutations(list(path)))) + draw(PIECES)[: draw(st.integers(0, 1))]
    return "".join(pieces), path


# No deadline: each example runs DuckDB statements, whose time on a shared machine says
# nothing about the rule (the pytest rule: never assert timings).
UNTIMED = settings(deadline=None)


@given(pattern_and_path())
@UNTIMED
def test_the_sql_pattern_and_the_python_predicate_agree(case: tuple[str, str]) -> None:
    _agree(*case)


@given(st.lists(PIECES, max_size=8).map("".join), st.lists(PIECES, max_size=10).map("".join))
@UNTIMED
def test_the_two_agree_on_unrelated_pairs(pattern: str, path: str) -> None:
    _agree(pattern, path)


def test_a_page_goal_without_a_path_is_not_completed() -> None:
    # false, not NULL: a NULL would turn NOT (goal) (an is_not filter) into no row.
    for pattern in ("/a", "/a/**", "/a/*"):
        sql, params = sql_condition(_goal(Kind.PAGE, pattern), type_sql="'page_view'",
                                    name_sql="''", path_sql="NULL")  # fmt: skip
        row = DB.execute(f"SELECT {sql}", params).fetchone()
        assert row == (False,), sql


@given(st.lists(PIECES, max_size=8).map("".join))
def test_a_pattern_matches_itself_with_its_wildcards_as_text(pattern: str) -> None:
    # Every wildcard can stand for the empty text or for itself except "*" over "/":
    # the pattern with its stars dropped is always a match.
    assert path_matches(pattern, pattern.replace("*", ""))


def _goal(kind: Kind, target: str, currency: str | None = None) -> Goal:
    name = target if kind is Kind.EVENT else None
    path = target if kind is Kind.PAGE else None
    return Goal(1, "shop.example", kind, name, path, currency, target)


EVENTS = [
    # (event_type, payload, path)
    ("page_view", {}, "/register"),
    ("page_view", {}, "/blog/a/b"),
    ("page_view", {}, "/blog/a"),
    ("page_view", {}, "/blog_a"),  # LIKE's _ is text in a pattern
    ("page_view", {}, None),
    ("bot_page_view", {}, "/register"),
    ("signup", {"event_name": "Signup"}, "/register"),
    ("bot_signup", {"event_name": "Signup"}, "/register"),
    ("signup", {}, None),  # a native event: named by its type
    ("order_completed", {"event_name": "Order Completed"}, None),
]


@pytest.mark.parametrize(
    "goal",
    [_goal(Kind.EVENT, "Signup"), _goal(Kind.EVENT, "signup"), _goal(Kind.EVENT, "Order Completed"),
     _goal(Kind.PAGE, "/register"), _goal(Kind.PAGE, "/blog/**"), _goal(Kind.PAGE, "/blog/*")],
    ids=lambda g: f"{g.kind}:{g.event_name or g.page_path}",
)  # fmt: skip
def test_sql_condition_selects_what_matches_selects(goal: Goal) -> None:
    DB.execute("CREATE OR REPLACE TEMP TABLE ev (t VARCHAR, name VARCHAR, path VARCHAR)")
    rows = [(t, event_name_of(t, p), path) for t, p, path in EVENTS]
    DB.executemany("INSERT INTO ev VALUES (?, ?, ?)", rows)
    sql, params = sql_condition(goal, type_sql="t", name_sql="name", path_sql="path")
    got = DB.execute(f"SELECT t, name, path FROM ev WHERE {sql} ORDER BY ALL", params).fetchall()
    want = sorted(row for row in rows if matches(goal, *row))
    assert got == want and want  # every goal here selects something


def test_new_goal_defaults_and_normalises() -> None:
    event = new_goal("Shop.Example", "event", event_name="Purchase", currency_code="eur")
    assert (event.site, event.kind, event.currency, event.display_name) == (
        "shop.example", Kind.EVENT, "EUR", "Purchase")  # fmt: skip
    page = new_goal("shop.example", "page", page_path="/thanks/**")
    assert page.display_name == "Visit /thanks/**" and page.currency is None
    assert Goal.from_dict(page.as_dict()) == page


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"site": "not a domain", "goal_type": "event", "event_name": "E"},
         [("invalid_site", "site_id")]),
        ({"site": "a.example", "goal_type": "visit"}, [("invalid", "goal_type")]),
        ({"site": "a.example", "goal_type": "event"}, [("missing", "event_name")]),
        ({"site": "a.example", "goal_type": "page"}, [("missing", "page_path")]),
        ({"site": "a.example", "goal_type": "page", "page_path": "register"},
         [("invalid", "page_path")]),
        ({"site": "a.example", "goal_type": "page", "page_path": "/r", "currency_code": "USD"},
         [("invalid", "currency")]),
        ({"site": "a.example", "goal_type": "event", "event_name": "E", "currency_code": "US"},
         [("invalid_currency", "currency")]),
        ({"site": "a.example", "goal_type": "event", "event_name": "x" * 121},
         [("invalid", "event_name")]),
        ({"site": "a.example", "goal_type": "event", "event_name": "E\x00"},
         [("invalid", "event_name")]),
        ({"site": "a.example", "goal_type": "event", "event_name": "E", "page_path": "/x"},
         [("invalid", "page_path")]),
        ({"site": 7, "goal_type": "event", "event_name": 7},
         [("invalid_site", "site_id"), ("invalid", "event_name")]),
    ],
)  # fmt: skip
def test_bad_goals_name_every_field_at_fault(
    fields: dict[str, Any], errors: list[tuple[str, str]]
) -> None:
    site, goal_type = fields.pop("site"), fields.pop("goal_type")
    with pytest.raises(InvalidInput) as caught:
        new_goal(site, goal_type, **fields)
    assert [(e.code, e.field) for e in caught.value.errors] == errors
