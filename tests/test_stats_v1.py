"""The v1 → v2 translation (analytics/stats_v1.py) on its own: filters, periods and the
parameter named by each refusal; the service-level checks are in test_stats_api.py."""

from __future__ import annotations

import re
from typing import Any

import pytest

from event_analytics.analytics.stats_spec import StatsQueryError
from event_analytics.analytics.stats_v1 import filters, translate


@pytest.mark.parametrize(
    ("text", "want"),
    [("visit:browser==Firefox;visit:country!=US",
      [["is", "visit:browser", ["Firefox"]], ["is_not", "visit:country", ["US"]]]),
     ("event:page~blog|docs", [["contains", "event:page", ["blog", "docs"]]]),
     ("event:page!~blog", [["contains_not", "event:page", ["blog"]]]),
     ("event:props:q==a\\|b|c", [["is", "event:props:q", ["a|b", "c"]]]),
     ("event:props:q!=x==y", [["is_not", "event:props:q", ["x==y"]]])],
)  # fmt: skip
def test_filters(text: str, want: list[Any]) -> None:
    assert filters(text) == want


def _python(re2: str) -> str:
    """RE2's ``\\x{2f}`` escapes in Python's spelling."""
    return re.sub(r"\\x\{([0-9a-f]+)\}", lambda m: f"\\U{int(m[1], 16):08x}", re2)


def test_wildcards_are_whole_path_patterns() -> None:
    ((op, name, (pattern,)),) = filters("event:page==/blog/**")
    pattern = _python(pattern)
    assert (op, name) == ("matches", "event:page")
    assert re.search(pattern, "/blog/a/b") and not re.search(pattern, "/x/blog/a")
    ((_, _, (one,)),) = filters("event:page!=/a/*.html")
    one = _python(one)
    assert re.search(one, "/a/b.html") and not re.search(one, "/a/b/c.html")
    assert not re.search(one, "/a/bxhtml")  # "." is itself


def test_periods_and_shapes() -> None:
    t = translate("timeseries", {"site_id": "s", "period": "12mo", "date": "2024-03-01"})
    assert t.body["date_range"] == "12mo" and t.body["date"] == "2024-03-01"
    assert t.body["dimensions"] == ["time:month"]
    params = {"site_id": "s", "period": "custom", "property": "event:props:plan",
              "date": "2024-01-01,2024-01-31", "page": "3", "limit": "10"}  # fmt: skip
    c = translate("breakdown", params)
    assert c.body["date_range"] == ["2024-01-01", "2024-01-31"] and c.key == "plan"
    assert c.body["pagination"] == {"limit": 10, "offset": 20}
    a = translate("aggregate", {"site_id": "s"})
    assert a.body["date_range"] == "30d" and a.metrics == ("visitors",)


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [("aggregate", {}, "site_id"), ("aggregate", {"site_id": "s", "date": "yesterday"}, "date"),
     ("breakdown", {"site_id": "s", "property": "x", "limit": "1001"}, "limit"),
     ("aggregate", {"site_id": "s", "metrics": "visitors,"}, "metrics"),
     ("aggregate", {"site_id": "s", "filters": "visit:browser==;"}, "filters")],
)  # fmt: skip
def test_refusals_name_the_parameter(kind: Any, params: dict[str, str], field: str) -> None:
    with pytest.raises(StatsQueryError) as caught:
        translate(kind, params)
    assert caught.value.errors[0].field == field
