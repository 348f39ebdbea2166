"""Shared links in the engine: read-only links to one site's stats (docs/api.md,
"Shared links").

One hash (``Keys.shared_links``) from the SHA-256 of a link's token to the link as JSON:
the token is shown once, at creation, and never stored, so the engine's data (and every
backup) cannot be turned into a working link. A request presenting a token is looked up
here each time (HGET, no cache), so a revoked link is refused from the next request on.
A link made with a password also holds its scrypt hash (passwords.py), never the password;
``as_dict`` (every list answer) says only whether it has one.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from event_analytics.errors import FieldError, InvalidInput, NotFound
from event_analytics.keys import Keys
from event_analytics.passwords import MAX_LEN, MIN_LEN, hash_password
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors

MAX_LINKS = 10_000
MAX_NAME = 200


@dataclass(frozen=True)
class SharedLink:
    id: str
    site: str
    name: str
    created_at: str
    # The password's scrypt hash (passwords.py); None for a link without one.
    password_hash: str | None = None

    def as_dict(self) -> dict[str, str | bool]:
        """The link as shown (lists, the CLI): whether it has a password, not its hash."""
        protected = self.password_hash is not None
        return {"id": self.id, "site": self.site, "name": self.name,
                "created_at": self.created_at, "password_protected": protected}  # fmt: skip

    def stored(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "site": self.site, "name": self.name, "created_at": self.created_at}
            | ({} if self.password_hash is None else {"password_hash": self.password_hash})
        )


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _decode(raw: bytes | str) -> SharedLink:
    d = orjson.loads(raw)
    return SharedLink(d["id"], d["site"], d["name"], d["created_at"], d.get("password_hash"))


def check_password(password: object) -> str | None:
    """A link's password as given (None: no password); InvalidInput when unusable."""
    if password is None:
        return None
    if not isinstance(password, str) or not MIN_LEN <= len(password) <= MAX_LEN:
        raise InvalidInput(
            [FieldError("invalid_password", "password",
                        f"password is {MIN_LEN} to {MAX_LEN} characters, or absent")]
        )  # fmt: skip
    return password


class SharedLinkStore:
    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    async def create(
        self, site: str, name: str, password: str | None = None
    ) -> tuple[SharedLink, str]:
        """A new link to ``site`` and its token (shown once: only its digest is kept); with
        ``password`` (check_password), only its hash is kept."""
        password = check_password(password)
        if not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME:
            raise InvalidInput(
                [FieldError("invalid_name", "name", f"name is 1 to {MAX_NAME} characters")]
            )
        token = secrets.token_urlsafe(32)
        created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        # scrypt takes tens of ms: off the event loop.
        hashed = None if password is None else await asyncio.to_thread(hash_password, password)
        link = SharedLink(secrets.token_hex(8), site, name.strip(), created, hashed)
        async with engine_errors(write=True):
            if await self.client.hlen(self.keys.shared_links()) >= MAX_LINKS:
                raise InvalidInput(
                    [FieldError("too_many_links", "name",
                                f"the service holds {MAX_LINKS} shared links: revoke some")]
                )  # fmt: skip
            await self.client.hset(self.keys.shared_links(), digest(token), link.stored())
        return link, token

    async def find(self, token: str) -> SharedLink | None:
        """The live link of ``token``; None when there is none (never made, or revoked)."""
        async with engine_errors():
            raw = await self.client.hget(self.keys.shared_links(), digest(token))
        return None if raw is None else _decode(raw)

    async def _all(self) -> dict[str, SharedLink]:
        async with engine_errors():
            every = await self.client.hgetall(self.keys.shared_links())
        return {
            (f.decode() if isinstance(f, bytes) else f): _decode(raw) for f, raw in every.items()
        }

    async def list(self, site: str) -> list[SharedLink]:
        """The site's links, oldest first."""
        links = [link for link in (await self._all()).values() if link.site == site]
        return sorted(links, key=lambda link: (link.created_at, link.id))

    async def revoke(self, site: str, link_id: str) -> SharedLink:
        """Delete the site's link ``link_id``; NotFound when the site has none such."""
        for field, link in (await self._all()).items():
            if link.id == link_id and link.site == site:
                async with engine_errors(write=True):
                    gone = await self.client.hdel(self.keys.shared_links(), field)
                if gone:
                    return link
        raise NotFound(f"site {site} has no shared link {link_id}")
