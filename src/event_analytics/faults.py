"""Fault injection for the crash tests, and nothing else.

A test that means to kill a process at a named point sets one of these in that process's
environment; nothing else reads them, and they are not ``Settings`` (an operator has no
use for them):

- ``EA_ARCHIVER_CRASH_AT``: the archiver SIGKILLs itself at this point (``ARCHIVER_POINTS``).
- ``EA_REBUILD_CRASH_AFTER_BATCHES``: ``rebuild`` SIGKILLs itself after this many batches.
- ``EA_EXPIRY_CRASH_AT``: the expiry job SIGKILLs itself at this point (``EXPIRY_POINTS``).
- ``EA_ERASE_CRASH_AT``: ``forget`` SIGKILLs itself at this point of an hour file's
  rewrite (``ERASE_POINTS``; archive/erase.py).
- ``EA_ERASE_STOP_AT``: an erasure stops itself (SIGSTOP, a hang) at this point, for a
  test to SIGKILL the whole service at that instant (``ERASE_POINTS``).
- ``EA_IMPORT_CRASH_AFTER_APPEND``: ``import`` SIGKILLs itself after appending a chunk's
  events to the archive, before counting them (any non-empty value).

Read once, when the archiver or a rebuild starts; a value outside these fails loudly.
"""

from __future__ import annotations

import os
import signal
import threading

ARCHIVER_POINTS = ("after_write", "mid_line", "compact_written", "compact_renamed")
# expiry.py, per day: counters cleared; PostgreSQL rows gone; the first hour file gone.
EXPIRY_POINTS = ("after_counters", "after_postgres", "mid_files")
ERASE_POINTS = ("erase_written", "erase_renamed")


def _point(variable: str, points: tuple[str, ...]) -> str:
    point = os.environ.get(variable, "")
    if point and point not in points:
        raise ValueError(f"{variable}={point!r}: use one of {points}")
    return point


def archiver_crash_at() -> str:
    """The point the archiver dies at; "" (the default) for none."""
    return _point("EA_ARCHIVER_CRASH_AT", ARCHIVER_POINTS)


def expiry_crash_at() -> str:
    """The point the expiry job dies at; "" (the default) for none."""
    return _point("EA_EXPIRY_CRASH_AT", EXPIRY_POINTS)


def erase_crash_at() -> str:
    """The point an erasure dies at; "" (the default) for none."""
    return _point("EA_ERASE_CRASH_AT", ERASE_POINTS)


def erase_stop_at() -> str:
    """The point an erasure stops (SIGSTOP) at; "" (the default) for none."""
    return _point("EA_ERASE_STOP_AT", ERASE_POINTS)


def stop() -> None:
    """SIGSTOP this process: it hangs there until killed (or continued). Sent to the
    calling thread: one sent to the process may be taken by another thread, and this one
    would run on past the point before the whole process stops."""
    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)


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
