"""Run the third-party ``plausible-mcp`` package's Stats API v1 tools (PyPI; it reads
``PLAUSIBLE_BASE_URL`` and ``PLAUSIBLE_API_KEY``) against a base URL over the days
FIRST..LAST (its custom range) and print their answers as one JSON object. A script, so
the client's environment (and its telemetry switched off with ``DO_NOT_TRACK``) is its
own: ``python -m tests.stats_client_mcp SITE FIRST LAST``."""

from __future__ import annotations

import json
import sys

from plausible_mcp import server  # type: ignore[import-untyped]


def main() -> None:
    site, first, last = sys.argv[1:4]
    days = f"{first},{last}"
    answers = {
        "aggregate": server.get_aggregate_stats(
            site, days, metrics=["visitors", "visits", "pageviews", "bounce_rate"]
        ),
        "breakdown": server.get_breakdown(site, "visit:source", days, limit=10),
        "timeseries": server.get_timeseries(site, days, "date"),
        "realtime": server.get_realtime_visitors(site),
    }
    print(json.dumps({name: json.loads(text) for name, text in answers.items()}))


if __name__ == "__main__":
    main()
