"""Privacy-safe enrichment from what a request carries: referrer and source, utm
parameters, browser/os/device from the User-Agent, country from the IP.

Only derived values are kept: the IP is looked up and forgotten, the User-Agent becomes
three short names. Each lookup is cached (the same few User-Agents and addresses repeat).
The country database ships in the ``geoip2fast`` wheel; an operator may point
``EA_GEOIP_DB`` at a MaxMind-format (.mmdb) file instead.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
# Segment's context.campaign names for the same five.
CAMPAIGN_FIELDS = {"source": "utm_source", "medium": "utm_medium", "name": "utm_campaign",
                   "term": "utm_term", "content": "utm_content"}  # fmt: skip
MAX_VALUE = 1024
# Host -> the name people know it by. Matched on the registrable part of the host
# (the last two labels, or three for hosts like google.co.uk), subdomains included.
SOURCES = {
    "google": "Google", "bing": "Bing", "duckduckgo": "DuckDuckGo", "yahoo": "Yahoo!",
    "baidu": "Baidu", "yandex": "Yandex", "ecosia": "Ecosia", "qwant": "Qwant",
    "startpage": "Startpage", "brave": "Brave", "kagi": "Kagi",
    "facebook": "Facebook", "fb": "Facebook", "instagram": "Instagram",
    "twitter": "Twitter", "t.co": "Twitter", "x": "Twitter", "linkedin": "LinkedIn",
    "lnkd.in": "LinkedIn", "reddit": "Reddit", "youtube": "YouTube", "youtu.be": "YouTube",
    "pinterest": "Pinterest", "tiktok": "TikTok", "github": "GitHub",
    "news.ycombinator": "Hacker News", "mastodon.social": "Mastodon", "bsky": "Bluesky",
    "threads": "Threads", "chatgpt": "ChatGPT", "perplexity": "Perplexity",
}  # fmt: skip
_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu", "ne", "or"})
# Crawlers, headless browsers and HTTP libraries: no person behind the page view.
_BOT_WORDS = re.compile(
    r"bot|crawl|spider|slurp|headless|phantomjs|lighthouse|scrape|curl/|wget/|python-|"
    r"httpx|aiohttp|go-http-client|okhttp|java/|libwww|apache-httpclient|node-fetch|axios/",
    re.IGNORECASE,
)
_MOBILE_OS = frozenset({"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS",
                        "Firefox OS", "HarmonyOS"})  # fmt: skip
_TABLETS = re.compile(r"iPad|Tablet|Kindle|Silk|Nexus (7|9|10)|SM-T|Tab", re.IGNORECASE)


# URLs, hosts and User-Agents repeat from event to event: each parse is cached (the
# parsing is most of enrichment's cost per event; a cache hit is a dict lookup).
@lru_cache(maxsize=8192)
def host_of(url: str) -> str | None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.removeprefix("www.") if host else None


@lru_cache(maxsize=4096)
def source_name(host: str) -> str:
    """The usual name of a referring host (``www.google.co.uk`` -> ``Google``), else the host."""
    labels = host.split(".")
    for take in (3, 2, 1):
        if len(labels) < take:
            continue
        tail = labels[-take:]
        candidates = [".".join(tail)]
        if take > 1:
            stem = tail[:-1]
            if take == 3 and stem[-1] in _SECOND_LEVEL:
                stem = stem[:-1]
            candidates.append(".".join(stem))
        for candidate in candidates:
            if candidate in SOURCES:
                return SOURCES[candidate]
    return host


def referrer_fields(referrer: str | None, page_url: str | None) -> dict[str, str]:
    """``referrer`` and ``source`` for a referrer from another site (none for same-site)."""
    if not referrer or len(referrer) > MAX_VALUE:
        return {}
    host = host_of(referrer)
    if host is None:
        return {}
    if page_url is not None and host == host_of(page_url):
        return {}  # moving within the site is not a source (Plausible: "Direct / None")
    return {"referrer": referrer, "source": source_name(host)}


def utm_fields(page_url: str | None, campaign: Mapping[str, Any] | None = None) -> dict[str, str]:
    """utm_* from the page URL's query; Segment's ``context.campaign`` fills the rest."""
    found = dict(_utm_of_url(page_url)) if page_url and "utm_" in page_url else {}
    if campaign:
        for key, field in CAMPAIGN_FIELDS.items():
            sent = campaign.get(key)
            if isinstance(sent, str) and sent and field not in found:
                found[field] = sent[:MAX_VALUE]
    return found


@lru_cache(maxsize=8192)
def _utm_of_url(page_url: str) -> tuple[tuple[str, str], ...]:
    try:
        query = urlsplit(page_url).query
    except ValueError:
        return ()
    found: dict[str, str] = {}
    for name, value in parse_qsl(query):
        if name in UTM_FIELDS and value and name not in found:
            found[name] = value[:MAX_VALUE]
    return tuple(found.items())


@dataclass(frozen=True, slots=True)
class Agent:
    browser: str
    os: str
    device: str  # desktop | mobile | tablet | bot

    @property
    def bot(self) -> bool:
        return self.device == "bot"


@lru_cache(maxsize=4096)
def parse_agent(user_agent: str) -> Agent:
    """Browser, OS and device class of a User-Agent (ua-parser; cached per string)."""
    import ua_parser  # a second or so to load its rules: only when first needed

    if not user_agent.strip():
        return Agent("Other", "Other", "bot")  # browsers always send one
    result = ua_parser.parse(user_agent[:MAX_VALUE]).with_defaults()
    browser, os_family = result.user_agent.family, result.os.family
    device_family = result.device.family
    if device_family == "Spider" or _BOT_WORDS.search(browser) or _BOT_WORDS.search(user_agent):
        device = "bot"
    elif _TABLETS.search(device_family) or (os_family == "Android" and "Mobile" not in user_agent):
        device = "tablet"
    elif os_family in _MOBILE_OS or "Mobile" in user_agent:
        device = "mobile"
    else:
        device = "desktop"
    return Agent(browser, os_family, device)


def agent_fields(user_agent: str | None) -> dict[str, Any]:
    if user_agent is None:
        return {}
    agent = parse_agent(user_agent)
    fields: dict[str, Any] = {"browser": agent.browser, "os": agent.os, "device": agent.device}
    if agent.bot:
        fields["bot"] = True
    return fields


class Countries:
    """IP -> ISO country code, from geoip2fast's bundled data or an .mmdb file."""

    def __init__(self, db: Path | None = None) -> None:
        self.db = db
        self._lookup: Any = None
        self._lock = threading.Lock()
        self.country = lru_cache(maxsize=8192)(self._country)

    @property
    def loaded(self) -> bool:
        """Whether the database has been read (``load``, or the first lookup)."""
        return self._lookup is not None

    def load(self) -> None:
        """Read the database (half a second for geoip2fast): at start, not in a request."""
        with self._lock:
            if self._lookup is not None:
                return
            if self.db is not None:
                import maxminddb

                reader = maxminddb.open_database(str(self.db))

                def lookup(ip: str) -> str | None:
                    record = reader.get(ip)
                    if not isinstance(record, dict):
                        return None
                    country = record.get("country") or record.get("registered_country") or {}
                    code = country.get("iso_code") if isinstance(country, dict) else None
                    return code if isinstance(code, str) else None

            else:
                from geoip2fast import GeoIP2Fast

                geo = GeoIP2Fast(verbose=False)

                def lookup(ip: str) -> str | None:
                    code = geo.lookup(ip).country_code
                    return code if isinstance(code, str) and len(code) == 2 else None

            self._lookup = lookup

    def _country(self, ip: str) -> str | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if not address.is_global:
            return None
        if self._lookup is None:
            self.load()
        result: str | None = self._lookup(str(address))
        return result


@dataclass(frozen=True, slots=True)
class Seen:
    """What one request tells about its sender, for ``Enricher.fields``."""

    page_url: str | None = None
    referrer: str | None = None
    user_agent: str | None = None
    ip: str | None = None
    campaign: Mapping[str, Any] | None = None


class Enricher:
    """All enrichment, in the order the properties are added to an event."""

    def __init__(self, countries: Countries | None = None) -> None:
        self.countries = countries if countries is not None else Countries()

    def fields(self, seen: Seen) -> dict[str, Any]:
        out: dict[str, Any] = referrer_fields(seen.referrer, seen.page_url)
        utm = utm_fields(seen.page_url, seen.campaign)
        out |= utm
        if "utm_source" in utm:
            out["source"] = utm["utm_source"]  # tagged links name their source themselves
        out |= agent_fields(seen.user_agent)
        if seen.ip:
            country = self.countries.country(seen.ip)
            if country is not None:
                out["country"] = country
        return out
