"""The browser tracking script served at /js/script.js."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

SCRIPT = Path(__file__).with_name("script.js")


@lru_cache(maxsize=1)
def script() -> bytes:
    return SCRIPT.read_bytes()
