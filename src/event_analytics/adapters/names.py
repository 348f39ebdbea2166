"""Stable, documented normalisation of client-chosen names into our name patterns.

Event types must match ``model.EVENT_TYPE_PATTERN`` (they become part of key names) and
property names ``model.PROPERTY_NAME_PATTERN``. Other trackers send free text
(``"Order Completed"``, ``"Outbound Link: Click"``, ``"Product ID"``), so the same rules
turn any such name into an allowed one; the original is kept as a property.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MAX_TYPE_LENGTH = 64
MAX_NAME_LENGTH = 64
# Types our own mapping produces; a track event whose name normalises to one of them is
# prefixed, so a "Page View" track cannot pose as a page view without a page.
RESERVED_TYPES = frozenset({"page_view", "screen_view", "identify", "group", "alias"})
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def _ascii(text: str) -> str:
    # "Café Visité" -> "Cafe Visite": accents folded, other non-ASCII letters go.
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


@lru_cache(maxsize=4096)
def event_type(name: str) -> str:
    """``"Order Completed"`` -> ``order_completed``; always matches EVENT_TYPE_PATTERN.

    Lower case ASCII, every run of other characters one ``_``, trimmed; a name that does
    not start with a letter gets ``event_`` in front, an empty one is ``unnamed``; cut
    to 64 characters (then trailing ``_`` trimmed again).
    """
    word = _NOT_WORD.sub("_", _ascii(name).lower()).strip("_")
    if not word:
        return "unnamed"
    if not word[0].isalpha():
        word = "event_" + word
    return word[:MAX_TYPE_LENGTH].rstrip("_")


def track_type(name: str) -> str:
    """The event type of a custom (track) event: ``event_type`` kept off our own types."""
    normal = event_type(name)
    if normal in RESERVED_TYPES:
        normal = ("track_" + normal)[:MAX_TYPE_LENGTH]
    return normal


@lru_cache(maxsize=4096)
def property_name(name: str) -> str | None:
    """A property name as PROPERTY_NAME_PATTERN allows, or None when nothing is left.

    Runs of characters outside ``[A-Za-z0-9_.-]`` become one ``_`` (``"Product ID"`` ->
    ``Product_ID``, ``"$revenue"`` -> ``_revenue``); a name starting with a digit, ``.``
    or ``-`` gets a ``_`` in front. Longer than 64 characters: None (dropped visibly).
    """
    clean = _NOT_NAME.sub("_", _ascii(name))
    if not clean:
        return None
    if not (clean[0].isalpha() or clean[0] == "_"):
        clean = "_" + clean
    if len(clean) > MAX_NAME_LENGTH:
        return None
    return clean
