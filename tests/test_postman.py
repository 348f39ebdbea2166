"""docs/event-analytics.postman_collection.json: complete, well-formed, and still true.

It must name every path of the service's OpenAPI (plus /dashboard and /metrics), and
each of its requests, sent to the real service, must get the status and the shape of
its example response, so the collection cannot go stale silently. Both run on the app
in this process (tests.inproc): they ask HTTP questions only.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.inproc import InProcessService, Service
from tests.postman import SCRIPT_SETS, SCRIPTED, VARIABLE, Item, Runner, items, load

EXTRA = {("GET", "/dashboard"), ("GET", "/metrics")}


@pytest.fixture(scope="module")
def collection() -> dict[str, Any]:
    return load()


def openapi_operations(svc: Service) -> set[tuple[str, str]]:
    spec = svc.http.get(f"{svc.url}/openapi.json").json()
    methods = {"get", "post", "put", "patch", "delete"}
    return {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops if m in methods}


def template_regex(path: str) -> re.Pattern[str]:
    """/analytics/minute-buckets/{minute_key} → one segment of anything in its place."""
    parts = re.split(r"\{[^/{}]+\}", path)
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + "$")


def test_every_endpoint_is_in_the_collection(
    collection: dict[str, Any], api: InProcessService
) -> None:
    operations = openapi_operations(api) | EXTRA
    assert ("POST", "/events/batch") in operations and ("GET", "/dashboard") in operations
    requests = [(i.method, i.path) for i in items(collection)]
    missing = [
        (method, path)
        for method, path in sorted(operations)
        if not any(m == method and template_regex(path).match(p) for m, p in requests)
    ]
    assert not missing, f"add these to the Postman collection: {missing}"
    # And nothing the service no longer has.
    unknown = [
        (m, p)
        for m, p in requests
        if not any(m == om and template_regex(op).match(p) for om, op in operations)
    ]
    assert not unknown, unknown


def test_collection_is_well_formed(collection: dict[str, Any]) -> None:
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    declared = {v["key"] for v in collection["variable"]}
    assert "baseUrl" in declared
    scripts = "\n".join(
        "\n".join(e["script"]["exec"]) for e in collection.get("event", [])
    ) + "".join(i.prerequest for i in items(collection))
    # The variables the scripts set are the ones tests/postman.py's Runner sets.
    assert set(SCRIPT_SETS.findall(scripts)) == SCRIPTED <= declared
    for item in items(collection):
        where = f"{item.folder} / {item.name}"
        url = item.request["url"]
        assert item.raw_url.startswith("{{baseUrl}}/"), where
        parts = urlsplit("http://host" + item.raw_url.removeprefix("{{baseUrl}}"))
        assert url["host"] == ["{{baseUrl}}"] and "/" + "/".join(url["path"]) == parts.path, where
        assert [(q["key"], q["value"]) for q in url.get("query", [])] == parse_qsl(parts.query)
        used = VARIABLE.findall(json.dumps(item.request))
        assert set(used) <= declared | {"$guid"}, where
        if item.method == "POST":
            body = item.request["body"]["raw"]
            json.loads(VARIABLE.sub("x", body))
            reads_or_settings = (
                "{{baseUrl}}/analytics/",
                "{{baseUrl}}/api/v2/",
                "{{baseUrl}}/api/v1/sites/",
            )
            if not item.raw_url.startswith(reads_or_settings):
                # An ingest request sends a fresh id each run (or the one it resends).
                assert "{{$guid}}" in body or "{{eventId}}" in body, where
        assert item.examples, f"{where}: no example response"
        for example in item.examples:
            if example["_postman_previewlanguage"] == "json":
                json.loads(example["body"])
        code = item.examples[0]["code"]
        assert f"pm.response.to.have.status({code})" in item.tests, where


SEED_KEY = re.compile(r"[a-z][a-z0-9_]*_\d{4}-\d\d-\d\d_\d\d:\d\d")


def shape(body: Any) -> Any:
    """Top-level field names (of the first row, for a list); the seed's minute key as such."""
    if isinstance(body, list):
        return ["list", shape(body[0]) if body else None]
    if isinstance(body, dict):
        return sorted("<minute key>" if SEED_KEY.fullmatch(k) else k for k in body)
    return type(body).__name__


def test_collection_runs_against_the_service(api: InProcessService) -> None:
    """Each request, in order, as Postman's runner would send it: its example still holds."""
    runner = Runner(api.url)
    for item in items(load()):
        where = f"{item.folder} / {item.name}"
        example = item.examples[0]
        response = runner.send(api.http, item)
        assert response.status_code == example["code"], f"{where}: {response.text[:500]}"
        kind = {h["key"].lower(): h["value"] for h in example["header"]}["content-type"]
        assert response.headers["content-type"].split(";")[0] == kind.split(";")[0], where
        if example["_postman_previewlanguage"] == "json":
            expected, got = json.loads(example["body"]), response.json()
            if not (isinstance(got, list) and not got):
                assert shape(got) == shape(expected), where
    assert isinstance(runner.vars.get("eventId"), str)


def test_runner_resolves_like_postman() -> None:
    item = Item("f", "n", {}, '"eventId"', "", [])
    runner = Runner("http://x")
    runner.before(item)
    guids = runner.resolve("{{$guid}} {{$guid}}").split()
    assert len(set(guids)) == 2  # a new one at each occurrence
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", runner.vars["now"])
    assert runner.vars["eventTimestamp"] == runner.vars["now"]
    assert runner.resolve("{{baseUrl}}/analytics/minute-buckets/{{minuteKey}}").startswith(
        "http://x/analytics/minute-buckets/page_view_"
    )
    with pytest.raises(KeyError):
        runner.resolve("{{undeclared}}")
