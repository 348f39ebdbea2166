"""Reading /metrics in tests with prometheus-client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, client: httpx.Client | None = None) -> Samples:
    """Every sample of ``url``/metrics, keyed by (name, labels); through ``client`` where
    given (an in-process app's, tests.inproc), else over a socket."""
    r = (client or httpx).get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a labelled counter appears at its first use)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def events(samples: Samples, outcome: str, event_type: str = "page_view") -> float:
    return value(samples, "ea_events_total", outcome=outcome, event_type=event_type)
