"""Goals: what a site counts as a conversion. The model, its input rules, and the one
matcher, as a Python predicate and as SQL for DuckDB. Pure: no I/O.

A goal belongs to a site (a domain) and is one of (docs/api.md, "Goals"):

- an **event goal**: events whose name is ``event_name`` (the custom event's name as sent:
  Plausible's ``n``, Segment's ``event``; a native event without ``payload.event_name``
  is named by its ``event_type``), optionally with a revenue ``currency``;
- a **page goal**: page views whose path matches ``page_path``, a pattern in which ``**``
  stands for any characters and ``*`` for any characters but ``/`` (Plausible's
  wildcards); every other character is itself, the whole path must match, case counts.

Goals are definitions applied when a query runs, so they count events archived before
the goal was made. The planner uses ``sql_condition`` (a fixed SQL text with the
pattern bound as a parameter) and ``matches`` is the same rule for models and tests.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from event_analytics.errors import FieldError, InvalidInput
from event_analytics.revenue import CURRENCY_RULE, currency

MAX_SITE = 253
MAX_EVENT_NAME = 120
MAX_PAGE_PATH = 1024
MAX_DISPLAY_NAME = 120
# A domain as sites are named (Plausible's site_id): lower-case labels of letters, digits
# and hyphens joined by dots. Never part of a key name (goals are values of one hash).
_SITE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Kind(StrEnum):
    EVENT = "event"
    PAGE = "page"


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal as stored. ``id`` is unique across sites (the engine's counter)."""

    id: int
    site: str
    kind: Kind
    event_name: str | None
    page_path: str | None
    currency: str | None
    display_name: str

    def identity(self) -> str:
        """What find-or-create looks a goal up by: its site, kind and name or pattern."""
        return identity(self.site, self.kind, self.event_name or self.page_path or "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"kind": str(self.kind)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Goal:
        return cls(
            id=int(data["id"]),
            site=str(data["site"]),
            kind=Kind(data["kind"]),
            event_name=data.get("event_name"),
            page_path=data.get("page_path"),
            currency=data.get("currency"),
            display_name=str(data["display_name"]),
        )


def identity(site: str, kind: Kind, target: str) -> str:
    # NUL cannot occur in a checked site, name or pattern: the parts cannot run together.
    return f"{site}\x00{kind}\x00{target}"


def _text(value: Any, field: str, limit: int, errors: list[FieldError]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        errors.append(FieldError("invalid", field, f"{field} is a string of 1-{limit} characters"))
        return None
    if _CONTROL.search(value):
        errors.append(FieldError("invalid", field, f"{field} must not contain control characters"))
        return None
    return value


def check_site(value: Any) -> str:
    """The site's domain, lower-cased; InvalidInput naming ``site_id`` when it is none."""
    if isinstance(value, str) and len(value) <= MAX_SITE and _SITE.fullmatch(value.lower()):
        return value.lower()
    raise InvalidInput(
        [FieldError("invalid_site", "site_id", "site_id is a domain, e.g. example.com")]
    )


def new_goal(
    site: Any,
    goal_type: Any,
    *,
    event_name: Any = None,
    page_path: Any = None,
    currency_code: Any = None,
    display_name: Any = None,
) -> Goal:
    """A goal from request fields (id 0: the store assigns one), or InvalidInput with
    every field at fault (the field names are the Sites API's)."""
    errors: list[FieldError] = []
    try:
        domain = check_site(site)
    except InvalidInput as exc:
        errors.extend(exc.errors)
        domain = ""
    if goal_type not in (Kind.EVENT, Kind.PAGE):
        errors.append(FieldError("invalid", "goal_type", 'goal_type is "event" or "page"'))
        raise InvalidInput(errors)
    kind = Kind(goal_type)
    name = _text(event_name, "event_name", MAX_EVENT_NAME, errors)
    path = _text(page_path, "page_path", MAX_PAGE_PATH, errors)
    shown = _text(display_name, "display_name", MAX_DISPLAY_NAME, errors)
    money = None
    if kind is Kind.EVENT:
        if event_name is None:
            errors.append(FieldError("missing", "event_name", "an event goal needs event_name"))
        if page_path is not None:
            errors.append(FieldError("invalid", "page_path", "an event goal has no page_path"))
        if currency_code is not None:
            money = currency(currency_code)
            if money is None:
                errors.append(
                    FieldError("invalid_currency", "currency", f"currency is {CURRENCY_RULE}")
                )
    else:
        if page_path is None:
            errors.append(FieldError("missing", "page_path", "a page goal needs page_path"))
        elif path is not None and not path.startswith("/"):
            errors.append(FieldError("invalid", "page_path", 'page_path starts with "/"'))
        if event_name is not None:
            errors.append(FieldError("invalid", "event_name", "a page goal has no event_name"))
        if currency_code is not None:
            errors.append(
                FieldError("invalid", "currency", "only event goals have revenue (a currency)")
            )
    if errors:
        raise InvalidInput(errors)
    target = name if kind is Kind.EVENT else path
    assert target is not None
    default = target if kind is Kind.EVENT else f"Visit {target}"
    return Goal(0, domain, kind, name, path, money, shown or default[:MAX_DISPLAY_NAME])


# -- matching -------------------------------------------------------------------------

_STAR, _DOUBLE = object(), object()


def _tokens(pattern: str) -> list[object]:
    """The pattern as characters, ``*`` and ``**`` (left to right: ``***`` is ``**``, ``*``)."""
    out: list[object] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(_DOUBLE)
            i += 2
        elif pattern[i] == "*":
            out.append(_STAR)
            i += 1
        else:
            out.append(pattern[i])
            i += 1
    return out


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``path`` matches the page pattern: the whole path, case-sensitively."""
    tokens = _tokens(pattern)
    # reach[j]: the first i tokens can match path[:j]; one row per token, O(len * len).
    reach = [True] + [False] * len(path)
    for token in tokens:
        nxt = [False] * (len(path) + 1)
        for j in range(len(path) + 1):
            if token is _DOUBLE or token is _STAR:
                ok = reach[j] or (j > 0 and nxt[j - 1] and (token is _DOUBLE or path[j - 1] != "/"))
                nxt[j] = ok
            else:
                nxt[j] = j > 0 and reach[j - 1] and path[j - 1] == token
        reach = nxt
    return reach[len(path)]


def page_regex(pattern: str) -> str:
    """The RE2 (DuckDB ``regexp_full_match``) form of a page pattern: a fixed translation,
    every character that is not a letter or digit written as ``\\x{hex}`` (so no text of
    the pattern can be regex syntax), ``**`` as ``.*`` and ``*`` as ``[^/]*``; ``(?s)``
    lets ``.`` take a newline as ``path_matches`` does."""
    parts = ["(?s)"]
    for token in _tokens(pattern):
        if token is _DOUBLE:
            parts.append(".*")
        elif token is _STAR:
            parts.append("[^/]*")
        else:
            assert isinstance(token, str)
            parts.append(token if token.isalnum() and token.isascii() else f"\\x{{{ord(token):x}}}")
    return "".join(parts)


def event_name_of(event_type: str, payload: dict[str, Any]) -> str:
    """An event's name as event goals see it: ``payload.event_name``, else its type."""
    name = payload.get("event_name")
    return name if isinstance(name, str) else event_type


def matches(goal: Goal, event_type: str, event_name: str, path: str | None) -> bool:
    """Whether one event (its type, its name as ``event_name_of`` gives it, and its page's
    path) completes ``goal``. Bots' events (``bot_*`` types) complete none."""
    if goal.kind is Kind.EVENT:
        return not event_type.startswith("bot_") and event_name == goal.event_name
    assert goal.page_path is not None
    return event_type == "page_view" and path is not None and path_matches(goal.page_path, path)


_LIKE_SPECIAL = "%_\\"  # LIKE's wildcards and the escape we give it


def page_like(pattern: str) -> str:
    """The LIKE (``ESCAPE '\\'``) form of a page pattern with every wildcard as ``%``: the
    exact rule when the pattern has no ``*`` (only ``**``), else a necessary condition
    (``*`` takes no ``/``, ``%`` any text)."""
    parts = []
    for token in _tokens(pattern):
        if token is _DOUBLE or token is _STAR:
            parts.append("%")
        else:
            assert isinstance(token, str)
            parts.append("\\" + token if token in _LIKE_SPECIAL else token)
    return "".join(parts)


# The SQL of ``matches``, over an event's type, name and path expressions: the expressions
# are the planner's (columns it derived), the goal's values are bound parameters. A page
# pattern is matched with string functions where they are the rule (regular expressions
# were most of a goal query's CPU): equality without wildcards, LIKE with only ``**``;
# with a ``*``, LIKE first and the regular expression only for the paths LIKE lets
# through. Never NULL: an event without a path completes no page goal.
EVENT_SQL = "({type} NOT LIKE 'bot\\_%' ESCAPE '\\' AND {name} = ?)"
PAGE_SQL = "({type} = 'page_view' AND coalesce({match}, false))"
_EQUAL = "{path} = ?"
_LIKE = "{path} LIKE ? ESCAPE '\\'"
_LIKE_THEN_REGEX = "CASE WHEN {path} LIKE ? ESCAPE '\\' THEN regexp_full_match({path}, ?) END"


def sql_condition(
    goal: Goal, *, type_sql: str, name_sql: str, path_sql: str
) -> tuple[str, list[Any]]:
    """A DuckDB boolean expression true for the events that complete ``goal``, and its
    parameters in the order of its ``?``. ``type_sql``, ``name_sql`` and ``path_sql`` are
    the caller's own expressions (never request text); the goal's name or pattern is only
    a parameter."""
    if goal.kind is Kind.EVENT:
        return EVENT_SQL.format(type=type_sql, name=name_sql), [goal.event_name]
    pattern = goal.page_path
    assert pattern is not None
    tokens = _tokens(pattern)
    values: list[Any]
    if not any(t is _STAR or t is _DOUBLE for t in tokens):
        match, values = _EQUAL, [pattern]
    elif not any(t is _STAR for t in tokens):
        match, values = _LIKE, [page_like(pattern)]
    else:
        match, values = _LIKE_THEN_REGEX, [page_like(pattern), page_regex(pattern)]
    return PAGE_SQL.format(type=type_sql, match=match.format(path=path_sql)), values
