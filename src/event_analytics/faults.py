"""Fault injection for the crash tests, and nothing else.

A test that means to kill a process at a named point sets one of these in that process's
environment; nothing else reads them, and they are not ``Settings`` (an operator has no
use for them):

- ``EA_ARCHIVER_CRASH_AT``: the archiver SIGKILLs itself at this point (``ARCHIVER_POINTS``).
- ``EA_REBUILD_CRASH_AFTER_BATCHES``: ``rebuild`` SIGKILLs itself after this many batches.
- ``EA_EXPIRY_CRASH_AT``: the expiry job SIGKILLs itself at this point (``EXPIRY_POINTS``).

Read once, when the archiver or a rebuild starts; a value outside these fails loudly.
"""

from __future__ import annotations

import os
import signal

ARCHIVER_POINTS = ("after_write", "mid_line", "compact_written", "compact_renamed")
# expiry.py, per day: counters cleared; PostgreSQL rows gone; the first hour file gone.
EXPIRY_POINTS = ("after_counters", "after_postgres", "mid_files")


def archiver_crash_at() -> str:
    """The point the archiver dies at; "" (the default) for none."""
    point = os.environ.get("EA_ARCHIVER_CRASH_AT", "")
    if point and point not in ARCHIVER_POINTS:
        raise ValueError(f"EA_ARCHIVER_CRASH_AT={point!r}: use one of {ARCHIVER_POINTS}")
    return point


def expiry_crash_at() -> str:
    """The point the expiry job dies at; "" (the default) for none."""
    point = os.environ.get("EA_EXPIRY_CRASH_AT", "")
    if point and point not in EXPIRY_POINTS:
        raise ValueError(f"EA_EXPIRY_CRASH_AT={point!r}: use one of {EXPIRY_POINTS}")
    return point


def rebuild_crash_after_batches() -> int:
    """The batches after which a rebuild dies; 0 (the default) for never."""
    raw = os.environ.get("EA_REBUILD_CRASH_AFTER_BATCHES", "0")
    if not raw.isdigit():
        raise ValueError(f"EA_REBUILD_CRASH_AFTER_BATCHES={raw!r}: use a whole number >= 0")
    return int(raw)


def die() -> None:
    """SIGKILL this process: no cleanup, no flush, as a crash."""
    os.kill(os.getpid(), signal.SIGKILL)
