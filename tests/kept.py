"""What the session's fixtures start once and lend to many tests: engines, the service, the
in-process apps, kept by key (e.g. engine kind) while tests keep asking for them.

Pytest tears a parametrised session fixture down whenever two consecutive tests differ
in its parameter. A file runs its tests engine kind by engine kind and the next file
starts over, so fixtures that owned their engine or service stopped and started them at
each change (34 starts of the session's service in a run of the 21 files that use it).
The fixtures borrow from a ``Kept`` instead, and their own teardown stops nothing.

A kept service is not free either: idle, its tree still takes ~1.7 CPU-s a minute (the
archiver 1.1, serve 0.3, the query server 0.3; a start until ready is 1.3-1.9 CPU-s, both
at load 12-19). So what is lent with ``idle_s`` is stopped once no test has asked for it
that long (``expire``, after each test), and started again when one does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Kept:
    """Things started on first use, each stopped by its own exit stack: on ``expire``
    when idle past its ``idle_s``, else at ``close``, the latest started first (a service
    before the engine it runs on)."""

    def __init__(self) -> None:
        # key -> (the thing, its stops, idle_s, last lent at); in order of start.
        self._kept: dict[Hashable, tuple[Any, contextlib.ExitStack, float | None, float]] = {}

    def get(
        self, key: Hashable, start: Callable[[contextlib.ExitStack], T], idle_s: float | None
    ) -> T:
        """The thing kept under ``key``; the first time, or after it expired, ``start``
        makes it and registers how to stop it on the stack it is given."""
        if key in self._kept:
            value, stack, _, _ = self._kept[key]
        else:
            stack = contextlib.ExitStack()
            with contextlib.ExitStack() as failed:
                failed.callback(stack.close)  # what started before a failure is stopped
                value = start(stack)
                failed.pop_all()
        # Its place in the order is its (latest) start: a service is started after the
        # engine it runs on, so it stops before it.
        self._kept[key] = (value, stack, idle_s, time.monotonic())
        return value  # type: ignore[no-any-return]

    def expire(self) -> None:
        """Stop what was not lent for longer than its ``idle_s``."""
        now = time.monotonic()
        for key, (_, stack, idle_s, used) in reversed(list(self._kept.items())):
            if idle_s is not None and now - used > idle_s:
                del self._kept[key]
                stack.close()

    def close(self) -> None:
        """Stop everything, the latest started first."""
        while self._kept:
            key = next(reversed(self._kept))
            self._kept.pop(key)[1].close()
