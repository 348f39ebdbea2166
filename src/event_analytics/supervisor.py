"""Child processes of ``serve`` (the engine, the archiver): started, watched, restarted, stopped."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If serve is SIGKILLed its children must not linger, holding the data dir's files.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervised:
    """One child process, restarted with backoff whenever it exits until ``stop``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        before_start: Callable[[], None] | None = None,
        wait_ready: Callable[[subprocess.Popen[bytes]], None] | None = None,
        pass_fds: Sequence[int] = (),
        quiet: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.before_start = before_start
        self.wait_ready = wait_ready
        self.pass_fds = tuple(pass_fds)
        self.quiet = quiet
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._started = 0.0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self, wait: bool = True) -> None:
        self._started = time.monotonic()
        if self.before_start:
            self.before_start()
        out = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
            pass_fds=self.pass_fds,
            # Its own session: a Ctrl+C meant for serve must not stop the child first.
            start_new_session=True,
        )
        if wait:
            self.ready()

    def ready(self) -> None:
        """Until the child is ready (its ``wait_ready``; at once without one)."""
        if self.wait_ready and self.proc is not None:
            self.wait_ready(self.proc)

    def start(self, wait: bool = True) -> None:
        """Spawn the child and watch it; without ``wait`` the caller calls ``ready`` when
        it needs the child (its start-up then overlaps the caller's own)."""
        self._spawn(wait)
        # Restarts happen on this thread; PDEATHSIG follows the thread that forked,
        # and this one lives as long as serve does.
        self._watcher = threading.Thread(target=self._watch, name=f"watch-{self.name}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        backoff = 0.2
        while not self._stopping.wait(0.2):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            log.warning("%s exited with code %s; restarting", self.name, proc.returncode)
            # A child that keeps dying right after start is restarted ever more slowly.
            if time.monotonic() - self._started < 5.0:
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2
            if self._stopping.is_set():
                return
            try:
                self._spawn()
                self.restarts += 1
                log.info("%s restarted (%d so far)", self.name, self.restarts)
            except Exception:
                log.exception("%s restart failed; retrying in %.1f s", self.name, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def lower_priority(niceness: int) -> None:
    """``niceness`` for this process and, when it leads one, its session: for a child
    that Supervised started (a query server, the forget worker).

    Linux with autogroups (``kernel.sched_autogroup_enabled``, the default of most
    distributions) shares the CPU between sessions first, and a process's nice weighs
    only against the processes of its own session. Supervised starts a child in a session
    of its own, so the query server's nice alone changed nothing against serve's ingest
    worker (nor did SCHED_IDLE): under benchmarks/query_storm.py it took 2.6-3.1 s of CPU in
    10 s and ingest fell to 33-41 % of its rate alone; with the session's nice too, 0.4-0.6
    s and 65-102 %. Set only when this process leads its session: a session shared with
    other processes is not this one's to lower."""
    os.nice(niceness)
    if os.getsid(0) == os.getpid():
        # No autogroups (kernel without them, or not Linux): the nice above is all.
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(str(niceness))
