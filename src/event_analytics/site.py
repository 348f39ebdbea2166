"""Which site an archived event belongs to: the one rule export and the destinations use.

Pure. Events of the browser tracker carry the site they were sent for in
``payload.domain``; other events name it only through their page's URL. So an event
belongs to site S when ``payload.domain`` is S, or when its ``page_url``'s host is S
(compared lower-case, as hosts are). Until the site rule of the web-analytics queries
is settled (visits), this is the whole rule, kept here so it changes in one place.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit


@lru_cache(maxsize=4096)
def url_host(url: str) -> str | None:
    """The host of ``url`` in lower case, or None if it has none."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def site_of(payload: dict[str, Any]) -> str | None:
    """The event's site: ``payload.domain`` if it is set, else its page's host."""
    domain = payload.get("domain")
    if isinstance(domain, str) and domain:
        return domain
    page = payload.get("page_url")
    return url_host(page) if isinstance(page, str) else None


def on_site(payload: dict[str, Any], site: str) -> bool:
    """Whether the event belongs to ``site`` (see the module's rule)."""
    if payload.get("domain") == site:
        return True
    page = payload.get("page_url")
    return isinstance(page, str) and url_host(page) == site.lower()
