"""Heavy reads apart from ingest (issue 23): ``serve`` answers them in a supervised query
process at a lower CPU priority; the worker that acknowledges events only passes them
on. The real service, its real query process, stopped and killed with real signals."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from event_analytics import supervisor
from tests.helpers import HTTP, event, wait_for
from tests.scrape import scrape, value
from tests.servers import ServiceProcess, _descendants, _wait_gone, stopped_after

pytestmark = pytest.mark.slow  # starts the service and its query process

PAGE = "https://example.com/held"


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _query_pids(svc: ServiceProcess) -> list[int]:
    """serve's query server process(es): apart from the worker that acknowledges events."""
    assert svc.proc is not None
    found = []
    for pid in _descendants(svc.proc.pid):
        with contextlib.suppress(FileNotFoundError):  # a short-lived child, gone since
            if b"query-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[16])


def _in_flight(svc: ServiceProcess) -> float:
    return value(scrape(svc.url), "ea_forwarded_reads_in_flight")


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    # The defaults: one worker, one query process (the embedded engine).
    with stopped_after(ServiceProcess(tmp_path / "data", args=["--no-archiver"])) as svc:
        yield svc


def test_a_read_held_in_the_query_process_leaves_ingest_acknowledged(
    service: ServiceProcess,
) -> None:
    """The query process frozen mid-read (SIGSTOP: a read that holds its process as long
    as the test likes) while 50 events arrive: every one is acknowledged 201 while the read
    is still unanswered, and the read, let go, counts them all. With heavy reads on the
    worker's own event loop no acknowledgement could leave before that read ended."""
    svc = service
    (query,) = _query_pids(svc)
    assert svc.proc is not None
    assert _nice(query) > _nice(svc.proc.pid), "the query process runs at a lower priority"
    now = datetime.now(UTC)
    first = [event(ts=now, url=PAGE, user=f"before-{i}") for i in range(10)]
    later = [event(ts=now, url=PAGE, user=f"during-{i}") for i in range(50)]
    for e in first:
        assert HTTP.post(f"{svc.url}/events", json=e).status_code == 201
    minute = now.replace(second=0, microsecond=0)
    params = {"from": _iso(minute - timedelta(hours=1)), "to": _iso(minute + timedelta(minutes=1))}
    answer: dict[str, httpx.Response] = {}

    def read() -> None:
        answer["top"] = httpx.get(f"{svc.url}/analytics/top-pages", params=params, timeout=60)

    with _stopped(query):
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # The worker has the read in hand and passed it on (its own count, not a guess).
        wait_for(lambda: _in_flight(svc) == 1, 30, lambda: svc.output())
        codes = [HTTP.post(f"{svc.url}/events", json=e).status_code for e in later]
        assert codes == [201] * len(later)
        assert reader.is_alive() and _in_flight(svc) == 1, "the read was answered while held"
    reader.join(timeout=60)
    assert not reader.is_alive()
    top = answer["top"]
    assert top.status_code == 200, top.text
    assert top.json()["pages"] == [{"page_url": PAGE, "count": 60, "unique_users": 60}]
    assert _in_flight(svc) == 0


def test_a_dead_query_process_is_a_503_for_reads_only_and_comes_back(tmp_path: Path) -> None:
    """Query process killed while serve's supervisor is held still (so no restart can race
    the read): reads answer 503 queries-unavailable with Retry-After from the worker,
    events are still taken; let go, the supervisor restarts it and reads answer again."""
    svc = ServiceProcess(tmp_path / "data", workers=2, args=["--no-archiver"])
    with stopped_after(svc):
        assert svc.proc is not None
        (query,) = _query_pids(svc)
        counted = ("ea_http_request_duration_seconds_count",
                   {"method": "GET", "route": "/analytics/top-pages", "status": "503"})  # fmt: skip
        before = value(scrape(svc.url), counted[0], **counted[1])
        with _stopped(svc.proc.pid):  # serve itself: uvicorn's and our supervisors
            os.kill(query, signal.SIGKILL)
            _wait_gone([query])
            reads = [HTTP.get(f"{svc.url}/analytics/top-pages") for _ in range(4)]
            writes = [HTTP.post(f"{svc.url}/events", json=event()).status_code for _ in range(4)]
            # The workers' own 503s are in the request histogram (the query process,
            # which times what it answers, never saw them).
            assert value(scrape(svc.url), counted[0], **counted[1]) == before + 4
        assert writes == [201] * 4
        for r in reads:
            assert r.status_code == 503, r.text
            assert r.json()["type"].endswith(":queries-unavailable"), r.text
            assert int(r.headers["retry-after"]) >= 1
        wait_for(lambda: HTTP.get(f"{svc.url}/analytics/top-pages").status_code == 200, 60,
                 lambda: svc.output())  # fmt: skip
        (restarted,) = _query_pids(svc)
        assert restarted != query


def _fifo_hour(svc: ServiceProcess) -> Path:
    """An hour file that blocks the query reading it (a FIFO no one writes yet), in 2020."""
    hour = svc.data_dir / "persistent_events" / "2020/01/01/events_2020-01-01-00.jsonl"
    hour.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(hour)
    return hour


def test_one_client_cannot_take_every_query_slot(tmp_path: Path) -> None:
    """Two archive-query slots: a client holding one (a query stuck on a stalled hour file)
    is refused a second at once (503 analytics-busy, reason client_share), while another
    client gets the other slot and counter reads are answered from their own lane."""
    env = {"EA_ANALYTICS_MAX_CONCURRENT": "2", "EA_HEAVY_READ_WAIT_S": "0"}
    svc = ServiceProcess(tmp_path / "data", env=env, args=["--no-archiver"])
    with stopped_after(svc):
        hour = _fifo_hour(svc)
        stuck = {"date_range": ["2020-01-01T00:00:00Z", "2020-01-01T01:00:00Z"],
                 "metrics": ["events"]}  # fmt: skip
        quick = {"date_range": "1h", "metrics": ["events"]}
        held: dict[str, httpx.Response] = {}

        def hold() -> None:
            held["reply"] = httpx.post(f"{svc.url}/analytics/query", json=stuck, timeout=60)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        try:
            slots = ("ea_query_slots_in_use", {"lane": "archive"})
            wait_for(lambda: value(scrape(svc.url), slots[0], **slots[1]) == 1, 30)
            before = value(scrape(svc.url), "ea_query_refusals_total",
                           lane="archive", reason="client_share")  # fmt: skip
            mine = HTTP.post(f"{svc.url}/analytics/query", json=quick)
            assert mine.status_code == 503, mine.text
            assert mine.json()["type"].endswith(":analytics-busy")
            assert "this client" in mine.json()["detail"]
            assert int(mine.headers["retry-after"]) >= 1
            after = value(scrape(svc.url), "ea_query_refusals_total",
                          lane="archive", reason="client_share")  # fmt: skip
            assert after == before + 1
            other = {"X-Forwarded-For": "10.9.8.7"}
            theirs = HTTP.post(f"{svc.url}/analytics/query", json=quick, headers=other)
            assert theirs.status_code == 200, theirs.text
            counter = HTTP.get(f"{svc.url}/analytics/top-pages")
            assert counter.status_code == 200, counter.text
        finally:
            # Opens only while the query waits in its open: the slot was held until now.
            with contextlib.suppress(OSError):
                os.close(os.open(hour, os.O_WRONLY | os.O_NONBLOCK))
            hour.unlink()
            holder.join(timeout=60)
        assert held["reply"].status_code == 200, held["reply"].text


def _autogroup(pid: int) -> str:
    """``/autogroup-N nice K``: the scheduling group of the process's session."""
    return Path(f"/proc/{pid}/autogroup").read_text().strip()


def _children(svc: ServiceProcess, name: bytes) -> list[int]:
    assert svc.proc is not None
    found = []
    for pid in _descendants(svc.proc.pid):
        with contextlib.suppress(FileNotFoundError):  # a short-lived child, gone since
            if name in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def test_the_query_and_erasure_sessions_run_at_a_lower_priority(tmp_path: Path) -> None:
    """With autogroups (Linux's default) the CPU is shared between sessions first, and a
    nice weighs only within a session: the query process and the forget worker each lead
    a session of their own, so their nice alone left them an equal share against the
    ingest worker's session. Their sessions' nice is lowered too (where the kernel has
    autogroups, as here)."""
    env = {"EA_ADMIN_KEYS": "admin-key-for-the-forget-worker-0123456789"}
    grouped = Path("/proc/self/autogroup").exists()
    with stopped_after(ServiceProcess(tmp_path / "data", env=env, args=["--no-archiver"])) as svc:
        assert svc.proc is not None
        serve = svc.proc.pid
        wait_for(lambda: len(_children(svc, b"forget-worker")) == 1, 30, svc.output)
        (query,) = _children(svc, b"query-server")
        (erasures,) = _children(svc, b"forget-worker")

        def lowered(pid: int) -> bool:
            # The forget worker lowers itself once started (the query server before it
            # listens, so before serve is ready): waited for, within a bound.
            if _nice(pid) <= _nice(serve):
                return False
            return not grouped or _autogroup(pid).endswith("nice 10")

        for pid in (query, erasures):
            wait_for(lambda: lowered(pid), 30, lambda: f"{_autogroup(pid)} {svc.output()}")  # noqa: B023
            if grouped:
                assert _autogroup(pid).split()[0] != _autogroup(serve).split()[0]


def _slice_us(pid: int) -> int:
    """The time slice the kernel gives ``pid``'s main thread (sched_getattr(2))."""
    attr = supervisor._SchedAttr()
    number = {"x86_64": 315, "aarch64": 275}[os.uname().machine]
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(number, pid, ctypes.byref(attr), ctypes.sizeof(attr), 0) == 0
    return int(attr.sched_runtime) // 1000


def test_what_acknowledges_events_asks_for_short_slices_and_the_readers_do_not(
    tmp_path: Path,
) -> None:
    """serve, its embedded engine and its archiver run with EA_INGEST_SLICE_US slices (so
    that each of an event's wake-ups takes a core from a running query: supervisor.
    set_slice); the query process and the forget worker are back at the kernel's default,
    as is everything when it is 0."""
    env = {"EA_ADMIN_KEYS": "admin-key-for-the-forget-worker-0123456789"}
    default = _slice_us(os.getpid())
    assert default != 100  # else the test could not tell
    with stopped_after(ServiceProcess(tmp_path / "data", env=env)) as svc:
        assert svc.proc is not None
        wait_for(lambda: len(_children(svc, b"forget-worker")) == 1, 30, svc.output)
        (engine,) = _children(svc, b"valkey-server")
        (archiver,) = _children(svc, b"archiver")
        (query,) = _children(svc, b"query-server")
        (erasures,) = _children(svc, b"forget-worker")
        for pid in (svc.proc.pid, engine, archiver):
            assert _slice_us(pid) == 100, pid
        for pid in (query, erasures):
            # Reset as each lowers its priority (waited for, within a bound).
            wait_for(lambda: _slice_us(pid) == default, 30, svc.output)  # noqa: B023
    env |= {"EA_INGEST_SLICE_US": "0"}
    with stopped_after(ServiceProcess(tmp_path / "data0", env=env)) as svc:
        assert svc.proc is not None
        assert _slice_us(svc.proc.pid) == default
        (engine,) = _children(svc, b"valkey-server")
        assert _slice_us(engine) == default
