"""The live dashboard: one HTML page, one small script of ours, and vendored uPlot.

Everything it needs ships in the package (no CDN, no build step): ``index.html`` is
served at ``/dashboard`` and ``static/`` under ``/dashboard/static``. uPlot 1.6.32
(MIT, ``static/uPlot.LICENSE``) is the file ``dist/uPlot.iife.min.js`` of the npm
package ``uplot``, copied unchanged.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from event_analytics import __version__

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"


@cache
def page(name: str = "index.html") -> str:
    """A page, its static URLs tagged with the version so an upgrade is not served stale."""
    return (HERE / name).read_text(encoding="utf-8").replace("__VERSION__", __version__)
