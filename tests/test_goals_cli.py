"""``event-analytics goals add|list|delete`` as a subprocess, against a running service's
data dir (its embedded engine), agreeing with the HTTP API; bad arguments exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import HTTP, cli
from tests.servers import ServiceProcess, stopped_after

SITE = ["--site", "shop.example"]


@pytest.mark.slow
def test_cli_and_api_share_the_running_services_goals(tmp_path: Path) -> None:
    data = tmp_path / "data"
    where = ["--data-dir", str(data)]
    with stopped_after(ServiceProcess(data)) as svc:
        added = cli(["goals", "add", *where, *SITE, "--event", "Purchase", "--currency", "usd"], {})
        assert added.returncode == 0, added.stderr
        assert added.stdout.startswith("created goal ") and "\tPurchase\tUSD\t" in added.stdout
        page = cli(["goals", "add", *where, *SITE, "--page", "/thanks/**", "--json"], {})
        made = json.loads(page.stdout)
        assert made["created"] and made["display_name"] == "Visit /thanks/**"
        again = cli(["goals", "add", *where, *SITE, "--page", "/thanks/**", "--json"], {})
        assert json.loads(again.stdout) == made | {"created": False}
        api = HTTP.get(f"{svc.url}/api/v1/sites/goals", params={"site_id": "shop.example"})
        listed = cli(["goals", "list", *where, *SITE, "--json"], {})
        # The CLI lists oldest first, the API newest first (as Plausible does).
        assert json.loads(listed.stdout)["goals"] == api.json()["goals"][::-1]
        assert [g["goal_type"] for g in api.json()["goals"]] == ["page", "event"]
        gone = cli(["goals", "delete", *where, *SITE, str(made["id"])], {})
        assert gone.returncode == 0 and gone.stdout.startswith(f"deleted goal {made['id']}\t")
        api = HTTP.get(f"{svc.url}/api/v1/sites/goals", params={"site_id": "shop.example"})
        assert [g["goal_type"] for g in api.json()["goals"]] == ["event"]
        missing = cli(["goals", "delete", *where, *SITE, str(made["id"])], {})
        assert missing.returncode == 1
        assert missing.stderr.strip().splitlines()[-1] == (
            f"event-analytics goals delete: site shop.example has no goal {made['id']}; "
            "list them to see which exist"
        )
        text = cli(["goals", "list", *where, *SITE], {}).stdout.splitlines()
        assert text[0] == "id\ttype\tevent or page\tcurrency\tdisplay name"
        assert text[1:] == [f"{api.json()['goals'][0]['id']}\tevent\tPurchase\tUSD\tPurchase"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["add", "--site", "not a site", "--event", "E"], "--site: site_id is a domain"),
        (["add", *SITE, "--page", "thanks"], '--page: page_path starts with "/"'),
        (["add", *SITE, "--page", "/t", "--currency", "USD"], "--currency: only event goals"),
        (["add", *SITE, "--event", "E", "--currency", "dollars"], "--currency: currency is"),
        (["add", *SITE, "--event", "E", "--page", "/t"], "not allowed with argument"),
        (["add", *SITE], "one of the arguments --event --page is required"),
        (["delete", *SITE, "seven"], "invalid int value"),
        (["list"], "the following arguments are required: --site"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    # Checked before any engine is started: nothing is written to the data dir.
    done = cli(["goals", args[0], "--data-dir", str(tmp_path / "data"), *args[1:]], {})
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert says in last and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()
