"""An event's site, page path and hostname: one rule, in Python and as DuckDB SQL.

- **site**: the payload's ``domain`` (Plausible's events API and the script tag always
  send one), else its ``site`` (a native or Segment event may name its site), else the
  page URL's hostname; an event with none of them belongs to no site.
- **hostname**: the page URL's host, lower-cased, without a user, a port or a leading
  ``www.`` (as Plausible stores it).
- **path**: the page URL's path without its query and fragment (``/`` when empty); a
  page sent as a bare path (``/pricing?x=1``) is its part before ``?`` or ``#``.

The Python functions are the SQL expressions' twins (same regular expressions, which
RE2 and Python's ``re`` read alike, ``$`` aside); the visits model in the tests uses
them, and the model test compares both on generated URLs.
"""

from __future__ import annotations

import re
from typing import Any

_SCHEME = r"^[A-Za-z][A-Za-z0-9+.\-]*://"
_AUTHORITY = _SCHEME + r"([^/?#]*)"
_PATH = _SCHEME + r"[^/?#]*([^?#]*)"
_BARE_PATH = r"^[^?#]*"
_USER_PORT = r"^.*@|:[0-9]*$"
# Python's ``$`` also matches before a last newline, RE2's only at the end: ``\Z`` is RE2's.
_USER_PORT_PY = _USER_PORT.removesuffix("$") + r"\Z"
_WWW = r"^www\."


def path_of(url: str | None) -> str | None:
    if url is None:
        return None
    found = re.match(_PATH, url)
    if found:
        return found.group(1) or "/"
    if url.startswith("/"):
        bare = re.match(_BARE_PATH, url)
        return bare.group(0) if bare else None
    return None


def host_of(url: str | None) -> str | None:
    if url is None:
        return None
    found = re.match(_AUTHORITY, url)
    if not found:
        return None
    host = re.sub(_WWW, "", re.sub(_USER_PORT_PY, "", found.group(1)).lower())
    return host or None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) or None


def site_of(payload: dict[str, Any]) -> str | None:
    """The site of an event with this payload (see the module's rule)."""
    return (
        _text(payload.get("domain"))
        or _text(payload.get("site"))
        or host_of(_text(payload.get("page_url")))
    )


# The same, as SQL over the ``events`` relation's ``page_url`` and ``payload`` columns.
# Constants only: no value of a request is put into these texts.
def path_sql(url: str) -> str:
    return (
        f"(CASE WHEN regexp_matches({url}, '{_SCHEME}') "
        f"THEN coalesce(nullif(regexp_extract({url}, '{_PATH}', 1), ''), '/') "
        f"WHEN starts_with({url}, '/') THEN regexp_extract({url}, '{_BARE_PATH}', 0) END)"
    )


def host_sql(url: str) -> str:
    authority = f"regexp_extract({url}, '{_AUTHORITY}', 1)"
    stripped = f"lower(regexp_replace({authority}, '{_USER_PORT}', '', 'g'))"
    return f"nullif(regexp_replace({stripped}, '{_WWW}', ''), '')"


SITE_SQL = (
    "coalesce(nullif(payload->>'domain', ''), nullif(payload->>'site', ''), "
    f"{host_sql('page_url')})"
)
