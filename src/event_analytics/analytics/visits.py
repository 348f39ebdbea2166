"""Visits as SQL: a site's events cut into visits by the session timeout, per visit its
entry and exit page, pageviews, duration, bounce and first-event attributes.

The semantics (docs/api.md, "Visits"), which ``tests/visits_model.py`` restates in Python:

- A visit is one visitor's (``user_id``) events of one site in the order
  (timestamp, received_at, event_id); an event more than the timeout after the
  visitor's previous one starts a new visit (exactly the timeout apart: the same visit).
- Bot events (types ``bot_*``) are no part of any visit.
- A visit belongs to the range in which it starts. Whether an event in ``[from, to)``
  starts a visit depends only on the visitor's previous event, so events from
  ``from - timeout`` on are read, and no earlier: that decides it exactly. Events at or
  after ``to`` are not read: a visit crossing ``to`` ends, for this answer, at its last
  event before ``to``.

``ctes`` gives the CTEs ``visits`` (one row per visit starting in the range) and
``vev`` (those visits' events, each with its visit's columns), both keyed by ``uk`` (the
visitor) and ``vn`` (the visit's number among the visitor's).

Two plans give the same answer, as the funnels' do (``funnel._sequence_sql``). Sorting
each visitor's events by (user_id, timestamp, received_at, event_id) is most of a visit
query's cost, and string keys make it slow. The fast plan sorts by (hash of the user,
timestamp) and flags, in the same sorted pass, the two cases where that is not the exact
order: two events of one hash at one timestamp (a tie the full order would break) and
two users of one hash (their events would pass for one visitor's). A flagged answer is
thrown away and the exact plan runs (``uk`` is then the user_id itself).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from event_analytics.analytics.snapshot import Sources
from event_analytics.analytics.sql import Params, source
from event_analytics.archive.derived import FIELDS, UTM

ORDER = "ts, received_at, event_id"
# The fast plan's visitor key (a test passes a colliding one).
FAST_KEY = "hash(user_id)"
NON_INTERACTIVE = "coalesce(f_interactive, '') = 'false'"
DIRECT = "Direct / None"
# visit:* dimension -> its column in ``visits`` (and ``vev``).
VISIT_COLUMNS = {
    "visit:entry_page": "entry_page",
    "visit:exit_page": "exit_page",
    "visit:source": "source",
    "visit:referrer": "referrer",
    **{f"visit:{u}": u for u in UTM},
    "visit:device": "device",
    "visit:browser": "browser",
    "visit:os": "os",
    "visit:country": "country",
}
# event:* dimension -> its column in ``vev`` (derived at compaction: archive/derived.py).
EVENT_SQL = {"event:page": "path", "event:hostname": "hostname", "event:name": "event_name"}
# The derived columns ``vev`` carries for the event-scoped queries (pages, names, goals,
# revenue); ``payload`` only for custom properties.
EVENT_COLUMNS = ("path", "hostname", "event_name", "goal_event_name", "revenue_amount",
                 "revenue_currency")  # fmt: skip
NONE = "(none)"  # a custom property an event lacks, as Plausible shows it


def prop_sql(p: Params, name: str) -> str:
    return f"coalesce(payload->>{p.bind(name)}, '{NONE}')"


def _first(expr: str) -> str:
    # ``seq`` numbers a visitor's events in ORDER: one pass, where an ordered aggregate
    # (first(x ORDER BY ...)) sorts each visit again, once per column.
    return f"arg_min_null({expr}, seq)"


# The payload fields the visit columns read are the derived columns ``f_<name>``: the
# windows sort narrow rows, not the payload.
def _field(name: str) -> str:
    assert name in FIELDS  # a fixed list, not request text
    return f"f_{name}"


def visit_columns(
    attributes: frozenset[str],
    order: str = "seq",
    first: Callable[[str], str] = _first,
    names: Collection[str] | None = None,
) -> str:
    """A visit's columns over its events: the metrics' and those of ``attributes`` (of
    ``names`` only, when given). ``order`` orders a visit's events (``seq``, or ``ts``
    where no two of a visitor's events share one); ``first`` takes an expression's value
    at the visit's first event (by default an aggregate over its events)."""
    page = "path"
    device = _field("device")
    columns = {
        "start": "min(ts)",
        "duration_us": "epoch_us(max(ts)) - epoch_us(min(ts))",
        "visit_pageviews": "count_if(event_type = 'page_view')",
        "visit_events": "count(*)",
        "bounce": (
            "count_if(event_type = 'page_view') = 1 AND "
            f"count_if(event_type <> 'page_view' AND NOT {NON_INTERACTIVE}) = 0"
        ),
        "entry_page": f"arg_min_null({page}, {order}) FILTER (WHERE event_type = 'page_view')",
        "exit_page": f"arg_max_null({page}, {order}) FILTER (WHERE event_type = 'page_view')",
        "source": "coalesce(" + first(_field("source")) + f", '{DIRECT}')",
        "referrer": "coalesce(" + first(_field("referrer")) + f", '{DIRECT}')",
        # Plausible's device names are capitalised (Desktop, Mobile, Tablet).
        "device": first(f"upper({device}[1]) || {device}[2:]"),
        **{name: first(_field(name)) for name in (*UTM, "browser", "os", "country")},
    }
    # Only the attributes the query reads: each costs a pass over the visit's events.
    always = ("start", "duration_us", "visit_pageviews", "visit_events", "bounce")
    return ",\n    ".join(
        f"{sql} AS {name}"
        for name, sql in columns.items()
        if (name in always or name in attributes) and (names is None or name in names)
    )


def _fields(attributes: frozenset[str]) -> str:
    """The ``f_*`` columns the visit columns of ``attributes`` read."""
    wanted = {"interactive"} | (set(attributes) & set(FIELDS))
    return "".join(f", {_field(n)}" for n in FIELDS if n in wanted)


# Over a window ``w`` of one visitor's events in time order (``ts``, ``user_id``), by the
# fast plan: whether its order may be wrong here (a shared key, or a tie).
SUSPECT = "coalesce(lag(user_id) OVER w <> user_id OR lag(ts) OVER w = ts, false)"


def starts(p: Params, timeout_s: int) -> str:
    """1 when an event starts a visit (over the window ``w`` of its visitor's events in
    order: more than ``timeout_s`` after the one before it, or the first), else 0."""
    return (
        f"CASE WHEN epoch_us(ts) - epoch_us(lag(ts) OVER w) <= "
        f"{p.bind(timeout_s * 1_000_000)} THEN 0 ELSE 1 END"
    )


def ctes(
    p: Params,
    files: Sources,
    site: str,
    start: datetime,
    end: datetime,
    timeout_s: int,
    attributes: frozenset[str] = frozenset(VISIT_COLUMNS.values()),
    events: bool = True,
    fast_key: str | None = FAST_KEY,
    payload: bool = True,
    only: str | None = None,
) -> str:
    """The CTE list (without ``WITH``) ending in ``visits`` and ``vev``; ``visits`` has
    the columns of ``attributes`` (names from VISIT_COLUMNS) besides the metrics'.
    Without ``events``, ``vev`` has no event columns (``EVENT_COLUMNS``), and
    without ``payload`` its payload is NULL: the windows then sort only what the query
    reads. With ``fast_key``, ``visits`` has a
    column ``suspect``: true on some row when the fast plan's order may be wrong, and then
    rows that do not start in the range may be in it too (the answer is thrown away).
    ``only`` names a table of ``uk`` values (made by the visit cache, never request
    text): the visits of those visitors alone, from all their events."""
    lookback = start - timedelta(seconds=timeout_s)
    carried = ("payload" if payload else "NULL::JSON AS payload") + _fields(attributes)
    pages = {"entry_page", "exit_page"} & attributes
    wanted = EVENT_COLUMNS if events else ("path",) if pages else ()
    carried += "".join(f", {name}" for name in wanted)
    own = "".join(f", n.{name}" for name in EVENT_COLUMNS) if events else ""
    if fast_key is None:
        uk, order, suspect, keep = "user_id", ORDER, "false", ""
    else:
        uk, order = fast_key, "ts"
        suspect = SUSPECT
        # A suspect visit is kept wherever it starts: its row must reach the answer.
        keep = " OR bool_or(suspect)"
    # Restricted in the read itself: the rows of other visitors are never converted.
    among = f"{uk} IN (SELECT uk FROM {only})" if only is not None else None
    return f"""events AS ({source(p, files, among)}),
ev AS (SELECT event_id, {uk} AS uk, user_id, ts, received_at, event_type, {carried}
    FROM events WHERE ts >= {p.bind(lookback)} AND ts < {p.bind(end)}
    AND NOT starts_with(event_type, 'bot_') AND site = {p.bind(site)}),
seq AS (SELECT * EXCLUDE (user_id), {starts(p, timeout_s)} AS starts, row_number() OVER w AS seq,
    {suspect} AS suspect FROM ev WINDOW w AS (PARTITION BY uk ORDER BY {order})),
numbered AS (SELECT *, sum(starts) OVER (PARTITION BY uk ORDER BY seq
    ROWS UNBOUNDED PRECEDING) AS vn FROM seq),
visits AS (SELECT uk, vn,
    {visit_columns(attributes)}, bool_or(suspect) AS suspect
    FROM numbered GROUP BY uk, vn HAVING min(ts) >= {p.bind(start)}{keep}),
vev AS (SELECT n.event_id, n.ts, n.received_at, n.event_type, n.payload, n.f_interactive{own},
    v.* FROM numbered n JOIN visits v USING (uk, vn))"""
