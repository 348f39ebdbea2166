"""Goals over HTTP (Plausible's Sites API shape): find-or-create, list with cursors,
delete, bad input as problem+json naming the field, keys, and a restart.

The HTTP semantics run on the app in this process (tests.inproc) on each engine; the
restart of the embedded engine runs the real service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.backends import Backend
from tests.helpers import HTTP
from tests.inproc import InProcessService, in_process
from tests.servers import ServiceProcess, stopped_after

GOALS = "/api/v1/sites/goals"
FORM = {"content-type": "application/x-www-form-urlencoded"}


def _problem(reply: Any, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json", reply.text
    body: dict[str, Any] = reply.json()
    assert "{" not in body["detail"]  # no placeholder left
    return body


def test_put_list_and_delete(api: InProcessService) -> None:
    url, http = api.url + GOALS, api.http
    signup = {"site_id": "shop.example", "goal_type": "event", "event_name": "Signup"}
    first = http.put(url, json=signup)
    assert first.status_code == 200, first.text
    made = first.json()
    assert made == {"domain": "shop.example", "id": made["id"], "display_name": "Signup",
                    "goal_type": "event", "event_name": "Signup", "page_path": None,
                    "currency": None}  # fmt: skip
    again = http.put(url, json=signup)  # idempotent, as Plausible's
    assert again.status_code == 200 and again.json() == made
    # Plausible's own example sends form fields (curl -d).
    page = http.put(url, content="site_id=shop.example&goal_type=page&page_path=%2Fthanks%2F**",
                    headers=FORM)  # fmt: skip
    assert page.status_code == 200, page.text
    assert page.json()["display_name"] == "Visit /thanks/**"
    money = http.put(url, json={"site_id": "shop.example", "goal_type": "event",
                                "event_name": "Purchase", "currency": "eur"})  # fmt: skip
    assert money.status_code == 200 and money.json()["currency"] == "EUR"
    extra = [http.put(url, json={**signup, "event_name": f"E{i}"}).json() for i in range(4)]
    every = [made, page.json(), money.json(), *extra]
    listed = http.get(url, params={"site_id": "shop.example"})
    assert listed.status_code == 200, listed.text
    # Newest first, as Plausible lists them.
    want = [{k: v for k, v in g.items() if k != "domain"} for g in every][::-1]
    assert listed.json() == {"goals": want, "meta": {"after": None, "before": None,
                                                     "limit": 100}}  # fmt: skip
    # Pages of two, forwards by `after` and back by `before`.
    seen, cursor, pages = [], None, 0
    while True:
        params = {"site_id": "shop.example", "limit": 2} | ({"after": cursor} if cursor else {})
        body = http.get(url, params=params).json()
        seen += body["goals"]
        pages += 1
        assert body["meta"]["before"] == (None if pages == 1 else str(body["goals"][0]["id"]))
        cursor = body["meta"]["after"]
        if cursor is None:
            break
    assert seen == want and pages == 4
    back = http.get(url, params={"site_id": "shop.example", "limit": 2, "before": want[-1]["id"]})
    assert back.json()["goals"] == want[-3:-1]
    assert http.get(url, params={"site_id": "other.example"}).json()["goals"] == []
    # Delete: site_id in the query, or in a form body as Plausible's example sends it.
    gone = http.delete(f"{url}/{made['id']}", params={"site_id": "shop.example"})
    assert gone.status_code == 200 and gone.json() == {"deleted": True}
    form = http.request("DELETE", f"{url}/{page.json()['id']}", content="site_id=shop.example",
                        headers=FORM)  # fmt: skip
    assert form.status_code == 200, form.text
    twice = http.delete(f"{url}/{made['id']}", params={"site_id": "shop.example"})
    assert _problem(twice, 404)["type"].endswith(":not-found")
    other_site = http.delete(f"{url}/{money.json()['id']}", params={"site_id": "other.example"})
    _problem(other_site, 404)
    left = http.get(url, params={"site_id": "shop.example"}).json()["goals"]
    assert [g["id"] for g in left] == [g["id"] for g in want[:-2]]


BAD_PUTS = [
    ({"site_id": "shop.example", "goal_type": "visit"}, ["goal_type"]),
    ({"site_id": "shop.example", "goal_type": "event"}, ["event_name"]),
    ({"site_id": "not a site", "goal_type": "event", "event_name": "E"}, ["site_id"]),
    ({"site_id": "shop.example", "goal_type": "page", "page_path": "thanks"}, ["page_path"]),
    ({"site_id": "shop.example", "goal_type": "page", "page_path": "/t", "currency": "USD"},
     ["currency"]),
    ({"site_id": "shop.example", "goal_type": "event", "event_name": "E", "currency": "$"},
     ["currency"]),
    ({"site_id": "shop.example", "goal_type": "event", "event_name": 5}, ["event_name"]),
    ({"site_id": "shop.example", "goal_type": "event", "event_name": "E", "colour": "red"},
     ["colour"]),
    ([1, 2], ["body"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "fields"), BAD_PUTS)
def test_bad_goals_are_422_naming_the_field(
    api: InProcessService, body: Any, fields: list[str]
) -> None:
    problem = _problem(api.http.put(api.url + GOALS, json=body), 422)
    assert [e["field"] for e in problem["errors"]] == fields


def test_other_bad_requests(api: InProcessService) -> None:
    url, http = api.url + GOALS, api.http
    as_json = {"content-type": "application/json"}
    _problem(http.put(url, content=b"{nope", headers=as_json), 400)
    _problem(http.put(url, content=b"x", headers={"content-type": "text/csv"}), 415)
    _problem(http.put(url, content=b"{}" + b" " * 20_000, headers=as_json), 413)
    missing = _problem(http.get(url), 422)
    assert [e["field"] for e in missing["errors"]] == ["site_id"]
    bad_site = _problem(http.get(url, params={"site_id": "a b"}), 422)
    assert [e["field"] for e in bad_site["errors"]] == ["site_id"]
    assert [e["field"] for e in _problem(http.get(url, params={"site_id": "a.example",
            "limit": 0}), 422)["errors"]] == ["limit"]  # fmt: skip
    no_site = _problem(http.delete(f"{url}/1"), 422)
    assert [e["field"] for e in no_site["errors"]] == ["site_id"]
    not_id = _problem(http.delete(f"{url}/abc", params={"site_id": "a.example"}), 422)
    assert [e["field"] for e in not_id["errors"]] == ["goal_id"]
    money = {"site_id": "a.example", "goal_type": "event", "event_name": "Buy", "currency": "USD"}
    assert http.put(url, json=money).status_code == 200
    conflict = _problem(http.put(url, json=money | {"currency": "EUR"}), 422)
    assert [e["field"] for e in conflict["errors"]] == ["currency"]


READ, WRITE = "goals-read-key-0123456789", "goals-write-key-0123456789"


@pytest.mark.slow
def test_keys_and_a_restart_of_the_embedded_engine(tmp_path: Path) -> None:
    # The embedded engine (no REDIS_URL): goals are in its AOF, so a restart keeps them.
    env = {"EA_READ_KEYS": READ, "EA_WRITE_KEYS": WRITE}
    goal = {"site_id": "keyed.example", "goal_type": "event", "event_name": "Signup"}
    svc = ServiceProcess(tmp_path / "data", env=env)
    with stopped_after(svc):
        url = svc.url + GOALS

        def auth(key: str) -> dict[str, str]:
            return {"authorization": f"Bearer {key}"}

        _problem(HTTP.put(url, json=goal), 401)
        _problem(HTTP.put(url, json=goal, headers=auth(READ)), 403)  # reading is not writing
        made = HTTP.put(url, json=goal, headers=auth(WRITE))
        assert made.status_code == 200, made.text
        _problem(HTTP.get(url, params={"site_id": "keyed.example"}), 401)
        listed = HTTP.get(url, params={"site_id": "keyed.example"}, headers=auth(READ))
        assert [g["id"] for g in listed.json()["goals"]] == [made.json()["id"]]
        delete = f"{url}/{made.json()['id']}"
        _problem(HTTP.delete(delete, params={"site_id": "keyed.example"}, headers=auth(READ)), 403)
    svc = ServiceProcess(tmp_path / "data", env=env)
    with stopped_after(svc):
        url = svc.url + GOALS
        listed = HTTP.get(url, params={"site_id": "keyed.example"}, headers=auth(READ))
        assert listed.json()["goals"] == [{k: v for k, v in made.json().items() if k != "domain"}]


def test_with_only_read_keys_goal_changes_need_one(db: Backend, tmp_path: Path) -> None:
    # No write keys: ingest is open, but a goal change is never more open than reads.
    # The app in this process (the key checks are the app's), on the emptied engine.
    settings = db.settings(data_dir=tmp_path / "data", key_prefix=db.prefix, read_keys=READ)
    goal = {"site_id": "reads.example", "goal_type": "page", "page_path": "/a"}
    with in_process(settings, db.env) as svc:
        url = svc.url + GOALS
        _problem(svc.http.put(url, json=goal), 401)
        made = svc.http.put(url, json=goal, headers={"authorization": f"Bearer {READ}"})
        assert made.status_code == 200, made.text
        _problem(svc.http.delete(f"{url}/{made.json()['id']}",
                                 params={"site_id": "reads.example"}), 401)  # fmt: skip
