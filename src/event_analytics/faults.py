"""Fault injection for the crash tests, and nothing else.

A test that means to kill a process at a named point sets one of these in that process's
environment; nothing else reads them, and they are not ``Settings`` (an operator has no
use for them):

- ``EA_ARCHIVER_CRASH_AT``: the archiver SIGKILLs itself at this point (``ARCHIVER_POINTS``).
- ``EA_REBUILD_CRASH_AFTER_BATCHES``: ``rebuild`` SIGKILLs itself after this many batches.
- ``EA_IMPORT_CRASH_AFTER_APPEND``: ``import`` SIGKILLs itself after appending a chunk's
  events to the archive, before counting them (any non-empty value).

Read once, when the archiver or a rebuild starts; a value outside these fails loudly.
"""

from __future__ import annotations

import os
import signal

ARCHIVER_POINTS = ("after_write", "mid_line", "compact_written", "compact_renamed")


def archiver_crash_at() -> str:
    """The point the archiver dies at; "" (the default) for none."""
    point = os.environ.get("EA_ARCHIVER_CRASH_AT", "")
    if point and point not in ARCHIVER_POINTS:
        raise ValueError(f"EA_ARCHIVER_CRASH_AT={point!r}: use one of {ARCHIVER_POINTS}")
    return point


def rebuild_crash_after_batches() -> int:
    """The batches after which a rebuild dies; 0 (the default) for never."""
    raw = os.environ.get("EA_REBUILD_CRASH_AFTER_BATCHES", "0")
    if not raw.isdigit():
        raise ValueError(f"EA_REBUILD_CRASH_AFTER_BATCHES={raw!r}: use a whole number >= 0")
    return int(raw)


def import_crash_after_append() -> bool:
    """Whether an import dies between appending a chunk and counting it."""
    return bool(os.environ.get("EA_IMPORT_CRASH_AFTER_APPEND"))


def die() -> None:
    """SIGKILL this process: no cleanup, no flush, as a crash."""
    os.kill(os.getpid(), signal.SIGKILL)
