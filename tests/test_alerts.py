"""deploy/prometheus/alerts.yml and deploy/grafana/event-analytics.json, with Debian's
promtool: the rules check, their unit tests (each alert fires in one test and stays
quiet in another), and the metric names they use are the ones a live /metrics exports
(which `promtool check metrics` lints)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import HTTP, event
from tests.servers import ServiceProcess

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "event-analytics.json"
METRIC = re.compile(r"\b(ea_[a-z_]+)\b")


DESTINATION_METRICS = frozenset(
    {"ea_destination_up", "ea_destination_lag_seconds", "ea_destination_lag_events"}
)
# Exported only with EA_ARCHIVE_RETENTION_DAYS: tests/test_expiry.py checks them.
RETENTION_METRICS = frozenset(
    {"ea_archive_oldest_hour_timestamp_seconds", "ea_archive_retention_days"}
)


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def _run(*args: str, stdin: str | None = None, cwd: Path = PROMETHEUS) -> tuple[int, str]:
    out = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )  # fmt: skip
    return out.returncode, out.stdout + out.stderr


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_rules_check(promtool: str) -> None:
    code, out = _run(promtool, "check", "rules", RULES.name)
    assert code == 0, out
    assert f"SUCCESS: {len(_alerts())} rules found" in out, out


def test_rules_unit_tests_pass(promtool: str) -> None:
    code, out = _run(promtool, "test", "rules", RULE_TESTS.name)
    assert code == 0 and "SUCCESS" in out, out


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    wanted = {
        "EventAnalyticsArchiveLagHigh",
        "EventAnalyticsDeadLetters",
        "EventAnalyticsEngineErrors",
        "EventAnalyticsHighErrorRate",
        "EventAnalyticsRejectionSpike",
        "EventAnalyticsEngineMemoryNearLimit",
    }  # fmt: skip  (the issue's list; EventAnalyticsDown comes on top)
    names = {rule["alert"] for rule in _alerts()}
    assert wanted <= names
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == names and quiet == names, (names - fires, names - quiet)


def test_a_wrong_expectation_fails_the_unit_tests(promtool: str, tmp_path: Path) -> None:
    """The harness can fail: a firing case expected quiet is reported."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    for test in tests["tests"]:
        for case in test["alert_rule_test"]:
            if case["exp_alerts"]:
                case["exp_alerts"] = []
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / RULE_TESTS.name).write_text(yaml.safe_dump(tests))
    code, out = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert code != 0 and out.count("FAILED") >= 1, out
    for name in {rule["alert"] for rule in _alerts()}:
        assert f"alertname: {name}," in out, name


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, Grafana's variables filled in, parses as a recording rule."""
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    filled = [
        e.replace("$__rate_interval", "5m")
        .replace("$job", "event-analytics")
        .replace("$instance", ".*")
        for e in exprs
    ]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(filled)
    ]}]}  # fmt: skip
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    code, out = _run(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert code == 0, out


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["valkey"], indirect=True)  # the names, not the engine
def test_live_metrics_pass_promtool_and_have_every_name_used(
    promtool: str, live: ServiceProcess
) -> None:
    # Each labelled series appears at its first use: an event, a duplicate, a rejection,
    # a batch.
    body = event()
    assert HTTP.post(f"{live.url}/events", json=body).status_code == 201
    assert HTTP.post(f"{live.url}/events", json=body).status_code == 200
    assert HTTP.post(f"{live.url}/events", json={"user_id": "x"}).status_code == 422
    assert HTTP.post(f"{live.url}/events/batch", json={"events": [event()]}).status_code == 200
    text = HTTP.get(f"{live.url}/metrics").text

    code, out = _run(promtool, "check", "metrics", stdin=text)
    assert code == 0, out
    # promtool check metrics does find problems (so the check above can fail).
    bad = "# HELP ea_x a\n# TYPE ea_x counter\nea_x 1\n"
    assert _run(promtool, "check", "metrics", stdin=bad)[0] != 0

    exported = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1] != "#"}
    used = {m for rule in _alerts() for m in METRIC.findall(rule["expr"])}
    used |= {m for e in _dashboard_exprs() for m in METRIC.findall(e)}
    assert len(used) >= 8
    # Exported only with a destination configured: tests/test_postgres.py checks them.
    assert used - DESTINATION_METRICS - RETENTION_METRICS <= exported, sorted(used - exported)
