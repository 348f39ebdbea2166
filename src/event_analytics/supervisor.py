"""Child processes of ``serve`` (the engine, the archiver): started, watched, restarted, stopped.

A child that runs our own code (the query server, the archiver, the forget worker...) may be
started by fork instead of exec, as gunicorn's ``--preload`` does: ``serve`` has imported
the app already (about a second of CPU), and the forked child runs its command on those
modules instead of importing them again. Only while ``serve`` has one thread and no event
loop: a fork copies no other thread, so a lock another thread held would stay locked in
the child. So ``serve`` starts its children before any watcher thread (``start(watch=
False)``, then ``watch()``), and a restart, which happens on a watcher thread, always execs.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If serve is SIGKILLed its children must not linger, holding the data dir's files.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child(Protocol):
    """What Supervised and its ``wait_ready`` use of a child: ``Popen``'s, or ``Forked``'s."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


class Forked:
    """A child started by ``os.fork``, with the part of ``Popen``'s interface ``Child`` names."""

    def __init__(self, pid: int, argv: Sequence[str]) -> None:
        self.pid = pid
        self.argv = list(argv)
        self.returncode: int | None = None
        self._lock = threading.Lock()  # the watcher and stop() may both reap it

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # reaped elsewhere: gone, its code unknown (as Popen)
                    self.returncode = 0
                    return 0
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)  # as Popen.wait polls with a timeout
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid already reaped (and maybe reused)
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# Descriptors a forked child closes first (the data dir's lock: it is serve's and the
# engine's, as an exec'd child, which inherits only ``pass_fds``, never holds it).
_NOT_INHERITED: set[int] = set()


def not_inherited(fd: int, kept: bool = True) -> None:
    """Mark ``fd`` as one a forked child closes (``kept=False``: forget it again)."""
    if kept:
        _NOT_INHERITED.add(fd)
    else:
        _NOT_INHERITED.discard(fd)


def prepare_titles() -> None:
    """Let the children this process forks show their own command lines (``setproctitle``,
    in ``Supervised._fork``). Call it before the environment first changes: setproctitle
    finds the memory of the command line next to the environment's first copy, and a
    changed environment is a new copy elsewhere (found so: the title stayed serve's)."""
    import setproctitle

    setproctitle.getproctitle()  # sets setproctitle up now


def can_fork() -> bool:
    """Whether this process may fork a child that goes on running Python: one thread
    (the kernel's count, so threads started by C libraries count too) and no event loop."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


class Supervised:
    """One child process, restarted with backoff whenever it exits until ``stop``.

    With ``entry`` (the child's command as a function of this process: it returns the exit
    code) the first start forks and calls it, when ``can_fork``; otherwise, and for every
    restart, the child is ``argv`` exec'd. Either way the same environment, session,
    parent-death signal and standard input, and the same command line in ``ps``.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        before_start: Callable[[], None] | None = None,
        wait_ready: Callable[[Child], None] | None = None,
        pass_fds: Sequence[int] = (),
        quiet: bool = False,
        entry: Callable[[], int] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.before_start = before_start
        self.wait_ready = wait_ready
        self.pass_fds = tuple(pass_fds)
        self.quiet = quiet
        self.entry = entry
        self.proc: Child | None = None
        self.restarts = 0
        self._started = 0.0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self, wait: bool = True, fork: bool = False) -> None:
        self._started = time.monotonic()
        if self.before_start:
            self.before_start()
        if fork and self.entry is not None and can_fork():
            self.proc = self._fork(self.entry)
        else:
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

    def _fork(self, entry: Callable[[], int]) -> Forked:
        sys.stdout.flush()  # nothing buffered here is written twice
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return Forked(pid, self.argv)
        code = 1
        try:
            os.setsid()
            _die_with_parent()
            for fd in _NOT_INHERITED - set(self.pass_fds):
                with contextlib.suppress(OSError):
                    os.close(fd)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            if self.quiet:
                os.dup2(null, 1)
                os.dup2(null, 2)
            os.close(null)
            if self.env is not None:
                os.environ.clear()
                os.environ.update(self.env)
            import setproctitle

            # What ps and /proc/PID/cmdline show: the command an exec'd child runs.
            setproctitle.setproctitle(" ".join(self.argv))
            sys.argv = self.argv[:]
            code = entry()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            # Never back into serve's code: its finally blocks are serve's, not this child's.
            with contextlib.suppress(BaseException):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def ready(self) -> None:
        """Until the child is ready (its ``wait_ready``; at once without one)."""
        if self.wait_ready and self.proc is not None:
            self.wait_ready(self.proc)

    def start(self, wait: bool = True, watch: bool = True) -> None:
        """Spawn the child (forked, see the class) and watch it; without ``wait`` the
        caller calls ``ready`` when it needs the child (its start-up then overlaps the
        caller's own); without ``watch`` it calls ``watch`` once it has started every
        child it forks (a watcher is a thread: after it, no fork)."""
        self._spawn(wait, fork=True)
        if watch:
            self.watch()

    def watch(self) -> None:
        """Restart the child whenever it exits, until ``stop``."""
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


# sched_setattr(2) by number: Python's os module has no wrapper for it.
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(os.uname().machine)


class _SchedAttr(ctypes.Structure):
    _fields_ = [  # struct sched_attr (include/uapi/linux/sched/types.h)
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


def set_slice(us: int) -> bool:
    """Ask for time slices of ``us`` microseconds for the calling thread (0: the kernel's
    default), inherited by the threads and processes it starts after.

    With Linux's EEVDF scheduler (6.12 and later) a thread that asks for a shorter slice
    gets an earlier deadline and takes a core from one that runs on as soon as it wakes.
    ``serve`` asks for short slices for what acknowledges events (its API workers, the
    embedded engine, the archiver): each event is a few wake-ups in turn (client, worker,
    engine, worker), and each waited for a DuckDB thread of the query process to end its
    slice, niced or not. Under benchmarks/query_storm.py's archive storm, alternating,
    quiet: ingest at full speed kept 37-40 % of its rate alone without, 53-59 % with
    100 µs (docs/deploy.md). An older kernel ignores the request; False if refused."""
    if _SCHED_SETATTR is None:
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=os.SCHED_OTHER,
        # sched_setattr sets the nice too: keep this thread's.
        sched_nice=os.getpriority(os.PRIO_PROCESS, 0),
        sched_runtime=us * 1000,
    )
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.syscall(_SCHED_SETATTR, 0, ctypes.byref(attr), 0) == 0)


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
    set_slice(0)  # serve's short slices are for ingest, not for this
    if os.getsid(0) == os.getpid():
        # No autogroups (kernel without them, or not Linux): the nice above is all.
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(str(niceness))
