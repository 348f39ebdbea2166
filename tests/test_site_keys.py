"""Keys per site (EA_SITE_KEYS): a site-limited read key reads its sites through the
site-scoped routes and nothing else, on the real service (docs/deploy.md, "Keys per site").

The route sweep takes every operation from the service's own OpenAPI, so a route added
later is tried too: it must refuse a key limited to site A, or name its site and refuse B.

The app runs in this process (tests.inproc) with its archiver beside it on the same loop
and its data dir's embedded engine, as ``serve`` runs them: what is asked here is the
app's (keys, sites, links, problem+json). The ``links`` CLI still runs as a process on
the app's data dir, and the log the last test reads is the one the app writes in this
process, as ``serve`` writes it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from event_analytics.api.security import (
    KEYLESS_PATHS,
    PUBLIC_PATHS,
    PUBLIC_PREFIXES,
    SHARE_UNLOCK_PATH,
)
from event_analytics.config import Settings
from event_analytics.target import engine_settings
from tests.helpers import cli, event
from tests.inproc import InProcessService, in_process
from tests.readback import wait_stats_archived

READ, WRITE = "site-keys-read-0000001", "site-keys-write-000001"
A, B = "a-shop.example", "b-shop.example"
KEY_A = "site-key-for-a-only-0001"
KEY_AB = "site-key-for-a-and-b-001"
WAIT_S = 30


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """The keyed app with its archiver, on its data dir's embedded engine, started as
    ``serve`` starts it (target.engine_settings: the data dir's lock held, the engine's
    URL in the data dir, where the ``links`` CLI finds it)."""
    root = tmp_path_factory.mktemp("sitekeys")
    settings = Settings(
        data_dir=root / "data",
        archive_dir=root / "archive",
        read_keys=READ,  # type: ignore[arg-type]
        write_keys=WRITE,  # type: ignore[arg-type]
        # Upper case on purpose: sites are domains, compared lower-cased.
        site_keys=f"{KEY_A}@{A.upper()},{KEY_AB}@{A}|{B}",  # type: ignore[arg-type]
        share_embed_origins="https://blog.example, https://intranet.example:8443",  # type: ignore[arg-type]
    )
    with (
        engine_settings(settings) as resolved,
        in_process(resolved, {}, archiver=True) as app,
        app.logging_to(root / "serve.log"),
    ):
        _send(app)
        yield app


def _send(svc: InProcessService) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    bodies = [
        event(user=f"u{i}", ts=t0 + timedelta(minutes=i), url=f"https://{site}/p{i}", domain=site)
        for i, site in enumerate([A, A, B, B, B])
    ]
    r = svc.http.post(f"{svc.url}/events/batch", json={"events": bodies}, headers=_auth(WRITE))
    assert r.status_code in (200, 201, 207), r.text
    wait_stats_archived(svc, A, _auth(READ), datetime.now(UTC), WAIT_S)


def _visitors(svc: InProcessService, key: str, site: str) -> Any:
    body = {"site_id": site, "metrics": ["visitors"], "date_range": "7d"}
    return svc.http.post(f"{svc.url}/api/v2/query", json=body, headers=_auth(key))


def _sites(svc: InProcessService, key: str) -> list[str]:
    r = svc.http.get(f"{svc.url}/api/sites", params={"date_range": "7d"}, headers=_auth(key))
    assert r.status_code == 200, r.text
    return sorted(s["site_id"] for s in r.json()["sites"])


def test_sites_list_shows_only_the_keys_sites(svc: InProcessService) -> None:
    assert _sites(svc, READ) == [A, B]
    assert _sites(svc, KEY_A) == [A]
    assert _sites(svc, KEY_AB) == [A, B]


def test_stats_of_own_site_only(svc: InProcessService) -> None:
    r = _visitors(svc, KEY_A, A)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["metrics"] == [2]
    assert _visitors(svc, KEY_AB, B).json()["results"][0]["metrics"] == [3]
    refused = _visitors(svc, KEY_A, B.upper())
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("site-forbidden")
    assert B in refused.json()["detail"]
    for path in ("aggregate", "timeseries", "breakdown", "realtime/visitors"):
        params = {"site_id": B, "period": "7d", "metrics": "visitors"}
        if path == "breakdown":
            params["property"] = "visit:source"
        if path == "realtime/visitors":
            params = {"site_id": B}
        url = f"{svc.url}/api/v1/stats/{path}"
        assert svc.http.get(url, params=params, headers=_auth(KEY_A)).status_code == 403, path
        ok = svc.http.get(url, params={**params, "site_id": A}, headers=_auth(KEY_A))
        assert ok.status_code == 200, (path, ok.text)


def test_export_needs_an_allowed_site(svc: InProcessService) -> None:
    url = f"{svc.url}/api/export"
    now = datetime.now(UTC)
    span = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}
    own = svc.http.get(url, params={**span, "site": A}, headers=_auth(KEY_A))
    assert own.status_code == 200, own.text
    assert own.text.count("\n") == 2 and B not in own.text
    assert svc.http.get(url, params={**span, "site": B}, headers=_auth(KEY_A)).status_code == 403
    whole = svc.http.get(url, params=span, headers=_auth(KEY_A))
    assert whole.status_code == 403 and "?site=" in whole.json()["detail"]
    everything = svc.http.get(url, params=span, headers=_auth(READ))
    assert everything.status_code == 200 and everything.text.count("\n") == 5


def test_goals_of_own_site_only(svc: InProcessService) -> None:
    url = f"{svc.url}/api/v1/sites/goals"
    assert svc.http.get(url, params={"site_id": A}, headers=_auth(KEY_A)).status_code == 200
    assert svc.http.get(url, params={"site_id": B}, headers=_auth(KEY_A)).status_code == 403
    # Goal changes take the write scope (write keys are set): a read key has none.
    goal = {"site_id": A, "goal_type": "event", "event_name": "Signup"}
    assert svc.http.put(url, json=goal, headers=_auth(KEY_A)).status_code == 403


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def _params(operation: dict[str, Any]) -> dict[str, str]:
    """A valid value for each query parameter the operation declares, site B for a site."""
    now = datetime.now(UTC)
    known = {"site_id": B, "site": B, "date_range": "7d", "period": "7d",
             "metrics": "visitors", "property": "visit:source",
             "from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}  # fmt: skip
    return {
        p["name"]: known.get(p["name"], "1")
        for p in operation.get("parameters", [])
        if p["in"] == "query" and (p.get("required") or p["name"] in known)
    }


def _sweep(svc: InProcessService, headers: dict[str, str]) -> list[tuple[str, str, httpx.Response]]:
    """Each operation of the OpenAPI that takes a key, called with ``headers`` naming B
    wherever a site goes: (method, path, answer)."""
    spec = svc.http.get(f"{svc.url}/openapi.json").json()
    answers = []
    for path, operations in spec["paths"].items():
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path in KEYLESS_PATHS:
            continue
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            body = {"site_id": B, "metrics": ["visitors"], "date_range": "7d"}
            r = svc.http.request(method.upper(), f"{svc.url}{_fill(path)}",
                                 params=_params(operation),
                                 json=body if "requestBody" in operation else None,
                                 headers=headers)  # fmt: skip
            answers.append((method, path, r))
    return answers


def test_every_route_refuses_another_sites_data(svc: InProcessService) -> None:
    """Each operation of the OpenAPI, called with a key for A naming B wherever a site
    goes: refused (403), except the sites list, which answers without B."""
    answers = _sweep(svc, _auth(KEY_A))
    for method, path, r in answers:
        if path == "/api/sites":
            assert r.status_code == 200 and B not in r.text, r.text
            continue
        assert r.status_code == 403, (method, path, r.status_code, r.text[:300])
        assert B not in r.text or "may not read site" in r.text, (method, path, r.text)
    assert len(answers) > 20  # the sweep saw the whole API, not an empty schema


def test_other_routes_say_why(svc: InProcessService) -> None:
    r = svc.http.get(f"{svc.url}/analytics/realtime", headers=_auth(KEY_A))
    assert r.status_code == 403
    assert r.json()["type"].endswith("site-limited-key")
    assert "site-scoped" in r.json()["detail"]
    # The same route with an unlimited read key answers: the refusal is the key's limit.
    assert svc.http.get(f"{svc.url}/analytics/realtime", headers=_auth(READ)).status_code == 200


@pytest.mark.parametrize(
    "value",
    ["short-key@a.example", "no-site-given-000001", "no-site-given-000001@",
     "long-enough-key-00001@a b.example", "long-enough-key-00001@a/b"],
)  # fmt: skip
def test_bad_site_keys_fail_at_start(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="site_keys"):
        Settings(site_keys=value, data_dir=tmp_path)  # type: ignore[arg-type]


def test_site_keys_survive_the_hand_off(tmp_path: Path) -> None:
    settings = Settings(site_keys=f"{KEY_AB}@{A}|{B.upper()}", data_dir=tmp_path)  # type: ignore[arg-type]
    assert settings.site_keys == ((KEY_AB, (A, B)),)
    again = Settings.model_validate_json(settings.model_dump_json())
    assert again.site_keys == settings.site_keys


# -- shared links: the same sweep with a link's token instead of a key


def _link(svc: InProcessService, site: str, password: str | None = None) -> dict[str, Any]:
    body = {"site_id": site, "name": "client"} | (
        {} if password is None else {"password": password}
    )
    r = svc.http.post(f"{svc.url}/api/v1/sites/shared-links", json=body, headers=_auth(WRITE))
    assert r.status_code == 201, r.text
    link: dict[str, Any] = r.json()
    assert link["url"] == f"/share/{site}?auth={link['token']}"
    assert link["password_protected"] is (password is not None)
    return link


def _share(token: str, unlock: str | None = None) -> dict[str, str]:
    return {"X-Share-Token": token} | ({} if unlock is None else {"X-Share-Unlock": unlock})


def _unlock(svc: InProcessService, token: str, password: str) -> Any:
    return svc.http.post(f"{svc.url}{SHARE_UNLOCK_PATH}", json={"password": password},
                         headers=_share(token))  # fmt: skip


def test_shared_link_reads_its_site_until_revoked(svc: InProcessService) -> None:
    link = _link(svc, A)
    token = link["token"]
    r = _visitors_with(svc, _share(token), A)
    assert r.status_code == 200 and r.json()["results"][0]["metrics"] == [2], r.text
    assert _visitors_with(svc, _share(token), B).status_code == 403
    sites = svc.http.get(f"{svc.url}/api/sites", params={"date_range": "7d"}, headers=_share(token))
    assert [s["site_id"] for s in sites.json()["sites"]] == [A]
    listed = svc.http.get(f"{svc.url}/api/v1/sites/shared-links", params={"site_id": A},
                          headers=_auth(WRITE)).json()["shared_links"]  # fmt: skip
    assert link["id"] in [x["id"] for x in listed] and token not in str(listed)
    gone = svc.http.delete(f"{svc.url}/api/v1/sites/shared-links/{link['id']}",
                           params={"site_id": A}, headers=_auth(WRITE))  # fmt: skip
    assert gone.status_code == 200, gone.text
    refused = _visitors_with(svc, _share(token), A)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert _visitors_with(svc, _share("made-up-token"), A).status_code == 401


def test_links_are_managed_with_the_write_scope(svc: InProcessService) -> None:
    url = f"{svc.url}/api/v1/sites/shared-links"
    for key in (READ, KEY_A):
        r = svc.http.post(url, json={"site_id": A, "name": "x"}, headers=_auth(key))
        assert r.status_code == 403, r.text
        assert svc.http.get(url, params={"site_id": A}, headers=_auth(key)).status_code == 403
    bad = svc.http.post(url, json={"site_id": A, "name": ""}, headers=_auth(WRITE))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "name"
    other = svc.http.delete(f"{url}/nosuchlink", params={"site_id": A}, headers=_auth(WRITE))
    assert other.status_code == 404


@pytest.mark.parametrize("protected", [False, True], ids=["plain", "unlocked-password"])
def test_every_route_refuses_a_link_beyond_its_site(svc: InProcessService, protected: bool) -> None:
    """The sweep with a link's token, and with a password link's token and its unlock."""
    token = _link(svc, A, PASSWORD if protected else None)["token"]
    unlock = None
    if protected:
        unlock = _unlock(svc, token, PASSWORD).json()["unlock"]
        assert _visitors_with(svc, _share(token, unlock), A).status_code == 200
    answers = _sweep(svc, _share(token, unlock))
    for method, path, r in answers:
        if path == SHARE_UNLOCK_PATH:  # reads nothing: no password in the body (or none set)
            assert r.status_code in (403, 422) and B not in r.text, r.text
            continue
        if path == "/api/sites":
            assert r.status_code == 200 and B not in r.text, r.text
            continue
        # 401 on the write routes: a link's token is no key at all there.
        assert r.status_code in (401, 403), (method, path, r.status_code, r.text[:300])
    assert len(answers) > 20


def _visitors_with(svc: InProcessService, headers: dict[str, str], site: str) -> Any:
    body = {"site_id": site, "metrics": ["visitors"], "date_range": "7d"}
    return svc.http.post(f"{svc.url}/api/v2/query", json=body, headers=headers)


def test_links_cli_against_the_running_service(svc: InProcessService) -> None:
    """``links add`` on the service's data dir makes a token the service admits; ``list``
    shows it without the token; ``revoke`` closes it for the next request."""
    where = ["--data-dir", str(svc.data_dir), "--site", A]
    added = cli(["links", "add", *where, "--name", "from the shell", "--json"], {})
    assert added.returncode == 0, added.stderr
    link = json.loads(added.stdout)
    assert _visitors_with(svc, _share(link["token"]), A).status_code == 200
    listed = cli(["links", "list", *where], {})
    assert listed.returncode == 0 and link["id"] in listed.stdout, listed.stderr
    assert link["token"] not in listed.stdout
    revoked = cli(["links", "revoke", *where, link["id"]], {})
    assert revoked.returncode == 0, revoked.stderr
    assert _visitors_with(svc, _share(link["token"]), A).status_code == 401
    again = cli(["links", "revoke", *where, link["id"]], {})
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr


def test_embedding_only_when_asked_and_enabled(svc: InProcessService) -> None:
    framed = svc.http.get(f"{svc.url}/share/{A}", params={"auth": "t", "embed": "true"})
    assert framed.status_code == 200 and '<base href="/dashboard/">' in framed.text
    csp = "frame-ancestors https://blog.example https://intranet.example:8443"
    assert framed.headers["content-security-policy"] == csp
    assert "x-frame-options" not in framed.headers
    plain = svc.http.get(f"{svc.url}/share/{A}", params={"auth": "t"})
    assert plain.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert plain.headers["x-frame-options"] == "DENY"
    assert plain.headers["referrer-policy"] == "no-referrer"


# -- shared links with a password

PASSWORD = "correct horse battery"


def test_password_link_refuses_without_the_password(svc: InProcessService) -> None:
    link = _link(svc, A, PASSWORD)
    token = link["token"]
    for headers in (_share(token), _share(token, "9999999999.00"), _share(token, "garbage")):
        r = _visitors_with(svc, headers, A)
        assert r.status_code == 401 and "results" not in r.text, r.text
        assert r.json()["type"].endswith("share-password-required")
        sites = svc.http.get(f"{svc.url}/api/sites", params={"date_range": "7d"}, headers=headers)
        assert sites.status_code == 401 and A not in sites.text
    wrong = _unlock(svc, token, PASSWORD + "!")
    assert wrong.status_code == 401 and "unlock" not in wrong.json(), wrong.text
    assert "wrong password" in wrong.json()["detail"]
    assert _unlock(svc, token, "").status_code == 401
    listed = svc.http.get(f"{svc.url}/api/v1/sites/shared-links", params={"site_id": A},
                          headers=_auth(WRITE)).json()["shared_links"]  # fmt: skip
    mine = [x for x in listed if x["id"] == link["id"]]
    assert mine and mine[0]["password_protected"] is True
    assert PASSWORD not in str(listed) and "scrypt" not in str(listed) and token not in str(listed)


def test_password_link_reads_its_site_once_unlocked_until_revoked(svc: InProcessService) -> None:
    link = _link(svc, A, PASSWORD)
    token = link["token"]
    r = _unlock(svc, token, PASSWORD)
    assert r.status_code == 200, r.text
    unlock = r.json()["unlock"]
    assert PASSWORD not in r.text
    ok = _visitors_with(svc, _share(token, unlock), A)
    assert ok.status_code == 200 and ok.json()["results"][0]["metrics"] == [2], ok.text
    assert _visitors_with(svc, _share(token, unlock), B).status_code == 403
    sites = svc.http.get(f"{svc.url}/api/sites", params={"date_range": "7d"},
                         headers=_share(token, unlock))  # fmt: skip
    assert [s["site_id"] for s in sites.json()["sites"]] == [A]
    # An unlock is its link's only: another link with the same password needs its own.
    other = _link(svc, A, PASSWORD)["token"]
    assert _visitors_with(svc, _share(other, unlock), A).status_code == 401
    # Its expiry is inside its MAC: moved later, it is refused.
    expires, mac = unlock.split(".")
    assert _visitors_with(svc, _share(token, f"{int(expires) + 60}.{mac}"), A).status_code == 401
    # An unlock value does not stand in for the token.
    assert _visitors_with(svc, {"X-Share-Unlock": unlock}, A).status_code == 401
    gone = svc.http.delete(f"{svc.url}/api/v1/sites/shared-links/{link['id']}",
                           params={"site_id": A}, headers=_auth(WRITE))  # fmt: skip
    assert gone.status_code == 200, gone.text
    refused = _visitors_with(svc, _share(token, unlock), A)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert _unlock(svc, token, PASSWORD).status_code == 401


def test_password_rules_and_unlock_of_a_plain_link(svc: InProcessService) -> None:
    url = f"{svc.url}/api/v1/sites/shared-links"
    for bad in ("short", 12345678, "x" * 201):
        body = {"site_id": A, "name": "x", "password": bad}
        r = svc.http.post(url, json=body, headers=_auth(WRITE))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "password", r.text
    plain = _link(svc, A)["token"]
    r = _unlock(svc, plain, PASSWORD)
    assert r.status_code == 403 and r.json()["type"].endswith("share-no-password"), r.text
    # Without a token the route has no link to unlock (a key is no link).
    keyed = svc.http.post(f"{svc.url}{SHARE_UNLOCK_PATH}", json={"password": PASSWORD},
                          headers=_auth(WRITE))  # fmt: skip
    assert keyed.status_code == 401, keyed.text


def test_links_cli_with_a_password(svc: InProcessService) -> None:
    where = ["--data-dir", str(svc.data_dir), "--site", A]
    added = subprocess.run(
        [sys.executable, "-m", "event_analytics", "links", "add", *where, "--name", "cli",
         "--password-stdin", "--json"],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    link = json.loads(added.stdout)
    assert link["password_protected"] is True and PASSWORD not in added.stdout
    assert _visitors_with(svc, _share(link["token"]), A).status_code == 401
    unlock = _unlock(svc, link["token"], PASSWORD).json()["unlock"]
    assert _visitors_with(svc, _share(link["token"], unlock), A).status_code == 200
    listed = cli(["links", "list", *where], {})
    row = next(line for line in listed.stdout.splitlines() if line.startswith(link["id"]))
    assert row.split("\t")[2] == "yes" and PASSWORD not in listed.stdout


def test_the_password_is_in_no_log(svc: InProcessService) -> None:
    """After every test above sent it (right and wrong), the service's log has no trace."""
    token = _link(svc, A, PASSWORD)["token"]
    _unlock(svc, token, PASSWORD)
    _unlock(svc, token, PASSWORD + "!")
    assert svc.log_path is not None
    logged = svc.log_path.read_text(errors="replace")
    assert logged and PASSWORD not in logged
