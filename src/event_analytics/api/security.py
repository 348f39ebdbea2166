"""Who may call what: API keys with scopes, rate limits, browser origins.

Everything here is decided from the raw ASGI scope, so the plain-ASGI ingest routes and
the FastAPI routes share one gate. With no keys, no limits and no origins configured
(the default) ``Guard.write_active``/``read_active`` are False: one attribute read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import time
from enum import StrEnum
from typing import Any

from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from event_analytics.api.body import header
from event_analytics.api.problems import problem_responses, refuse, render_error
from event_analytics.config import Settings
from event_analytics.errors import EventsRateLimited, SiteForbidden, StorageUnavailable
from event_analytics.passwords import unlock_valid
from event_analytics.store.ratelimit import RateLimits
from event_analytics.store.shared_links import SharedLinkStore

# The routes anyone may call whatever the keys: probes, the API description, and the
# dashboard's pages and files (they hold no data: a page reads it with the key given in
# its URL fragment, which the browser never sends, so the page itself must load keyless).
PUBLIC_PATHS = frozenset(
    {"/health", "/health/", "/health/ready", "/docs", "/docs/oauth2-redirect", "/redoc",
     "/openapi.json", "/dashboard", "/dashboard/explore", "/js/script.js"}
)  # fmt: skip
# Every page under /dashboard/ (the site pages, Explore, the static files): no data route
# lives under that path, so none is opened by this.
PUBLIC_PREFIXES = ("/dashboard/", "/share/")
# The routes that take the write scope: answered by ingest_http, before FastAPI.
EVENTS_PATH = "/events"
BATCH_PATH = "/events/batch"
SEGMENT_PATHS = frozenset({"/v1/batch", "/v1/track", "/v1/page", "/v1/screen", "/v1/identify",
                           "/v1/group", "/v1/alias"})  # fmt: skip
INGEST_PATHS = frozenset({EVENTS_PATH, BATCH_PATH, *SEGMENT_PATHS})
# Ingest without a key (browsers hold no secret): origins and address limits still apply.
KEYLESS_PATHS = frozenset({"/api/event"})
# Goal changes (api/goals.py): a goal changes what every reader's figures mean, so it takes
# the write scope (the read scope when only read keys are set: never open while reads
# are closed).
GOALS_PATH = "/api/v1/sites/goals"
GOAL_WRITE_METHODS = frozenset({"PUT", "DELETE"})
KEY_ID_SCOPE = "ea.key_id"
# The sites a site-limited key (EA_SITE_KEYS) may read, set by the guard; absent = any.
SITES_SCOPE = "ea.sites"
# The only routes a site-limited key may call: each names its site and checks it with
# ``check_site_access`` (the sites list filters its answer to them). Every other route —
# the site-less counters, archive queries, funnels, /persistent, /metrics, ingest — reads
# across sites, so a site-limited key is refused there (deny by default: a new route is
# closed to such keys until it is listed here and checks its site).
SITE_SCOPED_PATHS = frozenset(
    {"/api/v2/query", "/api/sites", "/api/export", "/api/export/manifest",
     "/api/v1/stats/realtime/visitors", "/api/v1/stats/aggregate", "/api/v1/stats/timeseries",
     "/api/v1/stats/breakdown", "/api/v1/sites/goals"}
)  # fmt: skip
SITE_SCOPED_PREFIXES = ("/api/v1/sites/goals/",)
# A shared link's token (X-Share-Token) reads its one site through these and nothing
# else: no goals, no export, no write route, no other site (the handlers check the site
# as for a site-limited key).
SHARE_TOKEN_HEADER = b"x-share-token"
SHARE_PATHS = frozenset(
    {"/api/v2/query", "/api/sites", "/api/v1/stats/realtime/visitors", "/api/v1/stats/aggregate",
     "/api/v1/stats/timeseries", "/api/v1/stats/breakdown"}
)  # fmt: skip
# Making, listing and revoking links hands out reading: the write scope when write keys
# are set, as goal changes take.
SHARED_LINKS_PATH = "/api/v1/sites/shared-links"
# Erasing people (api/admin.py): the admin scope only (EA_ADMIN_KEYS), never open; no
# read or write key reaches it.
ADMIN_PREFIX = "/api/v1/admin/"
# POST /api/import (api/imports.py) writes events, of any age: the write scope, as goal
# changes take it (the read scope when only read keys are set).
IMPORT_PATH = "/api/import"
# A link with a password: its token opens this route only, which trades the password for
# an unlock value (passwords.py) that every other request of the link then carries.
SHARE_UNLOCK_PATH = SHARED_LINKS_PATH + "/unlock"
SHARE_UNLOCK_HEADER = b"x-share-unlock"
# The link a token request was admitted for (store.shared_links.SharedLink).
SHARE_LINK_SCOPE = "ea.share_link"


class Access(StrEnum):
    WRITE = "write"
    READ = "read"
    ADMIN = "admin"


def fingerprint(key: str) -> str:
    """A short, stable id of a key for counters and logs (the key itself appears nowhere)."""
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def presented_key(scope: Scope) -> str | None:
    """The key of ``Authorization: Bearer <key>``, or the user of ``Authorization: Basic``
    (Segment's SDKs send ``base64(writeKey + ":")``), or failing that ``X-API-Key``."""
    bearer = api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
            elif scheme.lower() == "basic" and token.strip():
                bearer = _basic_user(token.strip())
        elif name == b"x-api-key":
            api_key = bytes(value).decode("latin-1").strip() or None
    return bearer or api_key


def _basic_user(token: str) -> str | None:
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def client_address(scope: Scope) -> str | None:
    """The client's address for rate limits: IPv6 clients by their /64, as they get one."""
    client = scope.get("client")
    if not client:
        return None
    host = str(client[0])
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network((host, 64), strict=False))
        except ValueError:
            return host
    return host


class KeyRing:
    """The configured keys, kept as SHA-256 digests and compared in constant time."""

    def __init__(
        self,
        write_keys: tuple[str, ...],
        read_keys: tuple[str, ...],
        site_keys: tuple[tuple[str, tuple[str, ...]], ...] = (),
        admin_keys: tuple[str, ...] = (),
    ) -> None:
        self.required = {
            Access.WRITE: bool(write_keys),
            Access.READ: bool(read_keys) or bool(site_keys),
            Access.ADMIN: True,  # with no admin key set, nobody has the scope
        }
        self._digests = {
            Access.WRITE: [hashlib.sha256(k.encode()).digest() for k in write_keys],
            Access.READ: [hashlib.sha256(k.encode()).digest() for k in read_keys],
            Access.ADMIN: [hashlib.sha256(k.encode()).digest() for k in admin_keys],
        }
        self.admin_open = bool(admin_keys)
        self._site_digests = [
            (hashlib.sha256(k.encode()).digest(), frozenset(sites)) for k, sites in site_keys
        ]

    def scopes_of(self, key: str) -> set[Access]:
        """Every scope the key holds. Each configured digest is compared, match or not.

        Digests have one length whatever the key's, and ``compare_digest`` takes the same
        time for any content, so timing tells nothing about how close a guess was.
        """
        digest = hashlib.sha256(key.encode()).digest()
        found: set[Access] = set()
        for access, digests in self._digests.items():
            hit = False
            for known in digests:
                hit |= hmac.compare_digest(known, digest)
            if hit:
                found.add(access)
        if self.sites_of(key) is not None:
            found.add(Access.READ)
        return found

    def sites_of(self, key: str) -> frozenset[str] | None:
        """The sites a site-limited key may read; None when it is no site key. A key in
        EA_READ_KEYS too reads every site (the wider grant is the operator's choice)."""
        digest = hashlib.sha256(key.encode()).digest()
        sites: frozenset[str] | None = None
        for known, allowed in self._site_digests:
            if hmac.compare_digest(known, digest):
                sites = allowed if sites is None else sites | allowed
        if sites is None:
            return None
        for known in self._digests[Access.READ]:
            if hmac.compare_digest(known, digest):
                return None
        return sites


def allowed_sites(scope: Scope) -> frozenset[str] | None:
    """The sites this request's key may read; None = every site."""
    sites: frozenset[str] | None = scope.get(SITES_SCOPE)
    return sites


def check_site_access(scope: Scope, site: str) -> None:
    """Raise SiteForbidden when the request's key is limited to sites and ``site`` is not
    one of them. Every route in SITE_SCOPED_PATHS calls this with the site it reads."""
    sites = allowed_sites(scope)
    if sites is not None and site.lower() not in sites:
        raise SiteForbidden(f"this API key may not read site {site.lower()!r}")


def site_scoped(path: str) -> bool:
    return path in SITE_SCOPED_PATHS or path.startswith(SITE_SCOPED_PREFIXES)


def unauthorized(detail: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="event-analytics"'}
    return refuse("unauthorized", detail, headers)


def forbidden(access: Access) -> Response:
    detail = f"this API key does not have the {access} scope"
    headers = {"WWW-Authenticate": f'Bearer realm="event-analytics", scope="{access}", '
               'error="insufficient_scope"'}  # fmt: skip
    return refuse("forbidden", detail, headers)


class Guard:
    """API keys, rate limits and allowed browser origins, for every route."""

    def __init__(self, settings: Settings, limits: RateLimits | None) -> None:
        self.keys = KeyRing(
            settings.write_keys, settings.read_keys, settings.site_keys, settings.admin_keys
        )
        self.limits = limits
        self.origins = frozenset(o for o in settings.cors_origins if o != "*")
        self.any_origin = "*" in settings.cors_origins
        self.cors = bool(settings.cors_origins)
        limited = limits is not None
        self.counts_events = limits is not None and limits.counts_events
        # Read on every request: plain attributes, not a lookup.
        self.write_active = self.keys.required[Access.WRITE] or limited or self.cors
        self.read_active = self.keys.required[Access.READ] or limited

    def origin_allowed(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    async def admit(
        self, scope: Scope, access: Access, *, body_key: str | None = None, keyless: bool = False
    ) -> Response | None:
        """None when the request may go on; otherwise the answer that refuses it.

        The address limit is counted before the key is judged, so guessing keys is rate
        limited too; the key limit only counts requests with a valid key. ``body_key`` is
        a key sent in the body (Segment's ``writeKey``), used when no header carries one;
        ``keyless`` routes (the browser's /api/event) need none.
        """
        if access is Access.WRITE and self.cors:
            origin = header(scope, b"origin")
            if origin is not None and not self.origin_allowed(origin):
                detail = "this browser origin may not send events here (EA_CORS_ORIGINS)"
                return refuse("origin-not-allowed", detail)
        refusal: Response | None = None
        key_id: str | None = None
        if self.keys.required[access] and not keyless:
            key = presented_key(scope) or body_key
            if key is None:
                refusal = unauthorized(
                    "an API key is required: Authorization: Bearer <key> or X-API-Key "
                    "(Segment's SDKs: Basic with the key as user, or writeKey in the body)"
                )
            else:
                scopes = self.keys.scopes_of(key)
                if access in scopes:
                    key_id = fingerprint(key)
                    scope[KEY_ID_SCOPE] = key_id
                    if access is Access.READ:
                        sites = self.keys.sites_of(key)
                        if sites is not None:
                            scope[SITES_SCOPE] = sites
                elif scopes:
                    refusal = forbidden(access)
                else:
                    refusal = unauthorized("unknown API key")
        if self.limits is not None:
            limited = await self.limits.hit(key_id, client_address(scope))
            if limited is not None:
                per = "API key" if limited.kind == "key" else "client address"
                detail = (
                    f"more than {limited.limit} requests in {self.limits.window_s} s "
                    f"for this {per}; retry after {limited.retry_after_s} s"
                )
                return refuse("rate-limited", detail, {"Retry-After": str(limited.retry_after_s)})
        return refusal

    async def take_events(self, scope: Scope, n: int) -> None:
        """Count ``n`` events of an admitted ingest request against the event limits;
        raises EventsRateLimited when over one (nothing is stored then)."""
        if self.limits is None or not self.counts_events:
            return
        limited = await self.limits.take(scope.get(KEY_ID_SCOPE), client_address(scope), n)
        if limited is not None:
            per = "API key" if limited.kind == "key" else "client address"
            raise EventsRateLimited(limited.limit, self.limits.window_s, per, limited.retry_after_s)


class ReadGuard:
    """Pure ASGI gate in front of the FastAPI routes: every one needs the read scope,
    except the public probes and docs (deny by default, so new routes are covered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else None
        if path is not None and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            guard: Guard = scope["app"].state.guard
            token = header(scope, SHARE_TOKEN_HEADER)
            if token is not None:
                refusal = await _admit_share_token(scope, path, token)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
                await self.app(scope, receive, send)
                return
            access, active = Access.READ, guard.read_active
            if path.startswith(ADMIN_PREFIX):
                refusal = await _admit_admin(guard, scope)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
                await self.app(scope, receive, send)
                return
            links = path == SHARED_LINKS_PATH or path.startswith(SHARED_LINKS_PATH + "/")
            goal_write = scope["method"] in GOAL_WRITE_METHODS and path.startswith(GOALS_PATH)
            if links or goal_write or path == IMPORT_PATH:
                if guard.keys.required[Access.WRITE]:
                    access = Access.WRITE
                active = guard.read_active or guard.write_active
            if active and scope["method"] != "OPTIONS":
                try:
                    refusal = await guard.admit(scope, access)
                except StorageUnavailable as exc:  # the rate limit's counter
                    refusal = render_error(exc)
                if refusal is None and SITES_SCOPE in scope and not site_scoped(path):
                    refusal = site_limited(path)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _admit_share_token(scope: Scope, path: str, token: str) -> Response | None:
    """None when ``token`` is a live shared link and ``path`` one of its read routes (its
    site is then the request's only site), unlocked when it has a password; otherwise the
    refusal. Looked up on every request, so a revoked link is refused at once."""
    unlocking = path == SHARE_UNLOCK_PATH and scope["method"] == "POST"
    if not unlocking and (
        path not in SHARE_PATHS or scope["method"] not in ("GET", "POST", "HEAD")
    ):
        detail = (
            f"a shared link reads its site's stats only; {path} is not one of its routes "
            "(POST /api/v2/query, GET /api/v1/stats/*, GET /api/sites)"
        )
        return refuse("share-link-scope", detail)
    app = scope["app"]
    limits: RateLimits | None = app.state.guard.limits
    try:
        if unlocking and limits is not None:  # each try costs a scrypt: bounded per address
            limited = await limits.hit(None, client_address(scope))
            if limited is not None:
                detail = (f"more than {limited.limit} requests in {limits.window_s} s for this "
                          f"client address; retry after {limited.retry_after_s} s")  # fmt: skip
                return refuse("rate-limited", detail,
                              headers={"Retry-After": str(limited.retry_after_s)})  # fmt: skip
        link = await SharedLinkStore(app.state.store.client, app.state.store.keys).find(token)
    except StorageUnavailable as exc:
        return render_error(exc)
    if link is None:
        return unauthorized("unknown or revoked shared link (X-Share-Token)")
    if link.password_hash is not None and not unlocking:
        value = header(scope, SHARE_UNLOCK_HEADER)
        if value is None or not unlock_valid(link.password_hash, link.id, value, time.time()):
            detail = (
                "this shared link has a password: POST it to "
                f"{SHARE_UNLOCK_PATH} and send the answer's unlock as X-Share-Unlock"
                + ("" if value is None else " (the one sent is expired or not this link's)")
            )
            return refuse("share-password-required", detail)
    scope[SITES_SCOPE] = frozenset({link.site})
    scope[SHARE_LINK_SCOPE] = link
    return None


async def _admit_admin(guard: Guard, scope: Scope) -> Response | None:
    """The admin scope, or the refusal (always refused while EA_ADMIN_KEYS is empty)."""
    if not guard.keys.admin_open:
        detail = (
            "the admin routes are closed: no admin key is set (EA_ADMIN_KEYS); read and "
            "write keys never open them. An operator can run `event-analytics forget`"
        )
        return refuse("admin-closed", detail)
    try:
        return await guard.admit(scope, Access.ADMIN)
    except StorageUnavailable as exc:  # the rate limit's counter
        return render_error(exc)


def site_limited(path: str) -> Response:
    detail = (
        f"this API key is limited to some sites (EA_SITE_KEYS) and {path} is not a "
        "site-scoped route: it reads across sites; use /api/v2/query, /api/v1/stats/*, "
        "/api/sites, /api/v1/sites/goals or /api/export?site="
    )
    return refuse("site-limited-key", detail)


def document_security(schema: dict[str, Any], settings: Settings) -> None:
    """Add the key schemes and the 401/403/429 answers to every guarded operation."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(
        {
            "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    )
    for path, operations in schema.get("paths", {}).items():
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            continue
        ingest = path in INGEST_PATHS
        readers = settings.read_keys + tuple(key for key, _ in settings.site_keys)
        required = settings.write_keys if ingest else readers
        statuses: tuple[int, ...] = (401, 403, 408, 429) if ingest else (401, 403, 429)
        if path in KEYLESS_PATHS:
            # No key, but origins and address limits apply.
            required, statuses = (), (403, 408, 429)
        if path.startswith(ADMIN_PREFIX):
            required = settings.admin_keys or ("closed",)
        for method, operation in operations.items():
            keys = required
            if path.startswith(GOALS_PATH) and method.upper() in GOAL_WRITE_METHODS:
                keys = settings.write_keys or readers
            if path == IMPORT_PATH:
                keys = settings.write_keys or readers
            responses = operation.setdefault("responses", {})
            for status, entry in problem_responses(*statuses).items():
                responses.setdefault(str(status), entry)
            if keys:
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
