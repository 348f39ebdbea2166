"""Segment's Node SDK (@segment/analytics-node, pinned in tests/node) against the real
service: every track/page counted once, also when answers are lost and it retries."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.clients import NODE_DIR, node_clients
from tests.lossy_proxy import LossyProxy
from tests.readback import total
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow


def _calls(rng: random.Random, n: int) -> tuple[list[dict[str, object]], Counter[str]]:
    calls: list[dict[str, object]] = []
    expected: Counter[str] = Counter()
    for i in range(n):
        user = f"node-user-{rng.randrange(6)}@example.com"
        if rng.random() < 0.4:
            url = f"https://app.example/{rng.choice(['home', 'docs', 'pricing'])}"
            calls.append({"type": "page", "params": {"anonymousId": f"anon-{i % 5}",
                          "name": "Page", "properties": {"url": url}}})  # fmt: skip
            expected["page_view"] += 1
        else:
            name = rng.choice(["Checkout Started", "Item Added"])
            calls.append({"type": "track", "params": {"userId": user, "event": name,
                          "properties": {"cart": {"items": rng.randrange(5)}}}})  # fmt: skip
            expected[name.lower().replace(" ", "_")] += 1
    return calls, expected


def _send(host: str, calls: list[dict[str, object]]) -> dict[str, object]:
    node_clients()
    node = shutil.which("node")
    assert node is not None
    run = subprocess.run(
        [node, str(NODE_DIR / "segment_send.mjs")],
        input=json.dumps({"host": host, "writeKey": "node-key", "calls": calls}).encode(),
        capture_output=True, cwd=NODE_DIR, timeout=120, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(run.stdout.decode().strip().splitlines()[-1])
    return result


def _counts(svc: ServiceProcess, since: datetime) -> Counter[str]:
    types = ["page_view", "checkout_started", "item_added"]
    return +Counter({t: total(svc, t, since) for t in types})


def test_node_sdk_counts_each_message_once(live: ServiceProcess) -> None:
    since = datetime.now(UTC)
    calls, expected = _calls(random.Random(3), 60)
    result = _send(live.url, calls)
    assert result["delivered"] == 60 and result["failed"] == 0, result
    assert _counts(live, since) == expected


def test_node_sdk_retries_lost_answers_exactly_once(live: ServiceProcess) -> None:
    since = datetime.now(UTC)
    calls, expected = _calls(random.Random(4), 100)
    with LossyProxy(live.port, lose=2) as proxy:
        result = _send(proxy.url, calls)
    assert result["delivered"] == 100 and result["failed"] == 0, result
    assert proxy.lost == 2 and proxy.forwarded > 2  # the lost batches were sent again
    assert _counts(live, since) == expected
