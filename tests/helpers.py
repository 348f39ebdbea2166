"""What more than one test module uses: builders, checks, senders, the archive read back.

One place for them: a test module never imports another test module's helpers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.server
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from event_analytics.ingest import Ingestor
from event_analytics.store import IngestWriter
from event_analytics.store.writer import AGGREGATE_ABOVE
from tests.servers import HTTP as HTTP  # re-exported: defined beside ServiceProcess (its http)
from tests.servers import ServiceProcess


class ThreadClients:
    """One httpx.Client per thread, for tests that send from a thread pool.

    One client shared by more threads than its keep-alive limit (20) loses requests:
    httpcore 1.0.9's pool closes an idle connection it has just handed to another thread
    (its surplus-idle check counts every connection, not the idle ones), and that thread
    then reads a closed socket (CI: ``ReadError: [Errno 9] Bad file descriptor`` in
    test_reads). 58 threads x 20,000 GETs to a plain local server: 9 failed with one
    shared client, 0 with one client per thread."""

    def __init__(self, timeout: float = 10) -> None:
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[httpx.Client] = []

    def get(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=self._timeout)
            with self._lock:
                self._clients.append(client)
        return client

    def __enter__(self) -> ThreadClients:
        return self

    def __exit__(self, *_: object) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


def event(
    *,
    user: str = "user_1",
    ts: datetime | str | None = None,
    event_type: str = "page_view",
    url: str | None = "https://example.com/page-1",
    event_id: str | None = None,
    **payload: Any,
) -> dict[str, Any]:
    if ts is None:
        ts = datetime.now(UTC)
    body: dict[str, Any] = {
        "event_id": event_id or str(uuid.uuid4()),
        "user_id": user,
        "timestamp": ts if isinstance(ts, str) else ts.isoformat(),
        "event_type": event_type,
        "payload": dict(payload),
    }
    if url is not None:
        body["payload"]["page_url"] = url
    return body


IST = timezone(timedelta(hours=5, minutes=30))


def run_store(db: Any, work: Any, aggregate_above: int = AGGREGATE_ABOVE, **settings: Any) -> Any:
    """``await work(ingestor, store)`` on the Backend ``db`` (Settings from ``settings``,
    e.g. a key prefix of its own: the session's services share the engine)."""

    async def main() -> Any:
        chosen = db.settings(**settings)
        store = IngestWriter.from_settings(chosen, aggregate_above=aggregate_above)
        try:
            return await work(Ingestor(chosen, store), store)
        finally:
            await store.close()

    return asyncio.run(main())


def seed_key(minute: datetime, event_type: str = "page_view") -> str:
    return f"{event_type}_{minute.astimezone(UTC).strftime('%Y-%m-%d_%H:%M')}"


def z(ts: datetime) -> str:
    """A UTC instant as the read API writes it (whole seconds, ``Z``)."""
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


# HyperLogLog's standard error in Redis and Valkey (16384 registers): 0.81%.
HLL_ERROR = 0.0081


def hll_close(got: int, exact: int) -> bool:
    """Within three standard errors, or one user for tiny sets."""
    return abs(got - exact) <= max(1.0, 3 * HLL_ERROR * exact)


def past_minutes(n: int) -> list[datetime]:
    """The ``n`` whole UTC minutes before the current one, the latest first."""
    base = datetime.now(UTC).replace(second=0, microsecond=0)
    return [base - timedelta(minutes=i) for i in range(1, n + 1)]


def cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m event_analytics ARGS`` run to its end, with ``env`` over ours."""
    return subprocess.run(
        [sys.executable, "-m", "event_analytics", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# Sending: aiohttp, not httpx: httpx's pool manages ~200 req/s at 64 connections here.
JSON = {"content-type": "application/json"}
SEND_ALL_CLIENTS = 64
HAMMER_CLIENTS = 16


async def send_all(url: str, bodies: list[dict[str, Any]]) -> list[int]:
    """POST every body from SEND_ALL_CLIENTS concurrent keep-alive connections; the
    statuses in order."""
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for index, body in enumerate(bodies):
        queue.put_nowait((index, orjson.dumps(body)))
    statuses = [0] * len(bodies)
    connector = aiohttp.TCPConnector(limit=SEND_ALL_CLIENTS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while not queue.empty():
                index, raw = queue.get_nowait()
                async with session.post("/events", data=raw, headers=JSON) as r:
                    await r.read()
                    statuses[index] = r.status

        await asyncio.gather(*(client() for _ in range(SEND_ALL_CLIENTS)))
    return statuses


async def hammer(
    url: str, bodies: list[dict[str, Any]], stop_after: int, kill: Callable[[], object]
) -> set[str]:
    """Send with HAMMER_CLIENTS connections; after ``stop_after`` acks call ``kill``; a
    connection that fails stops. -> the acked event ids."""
    acked: set[str] = set()
    pending = list(reversed(bodies))
    killed = False
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(url, timeout=timeout) as session:

        async def client() -> None:
            nonlocal killed
            while pending:
                body = pending.pop()
                try:
                    async with session.post("/events", data=orjson.dumps(body), headers=JSON) as r:
                        if r.status == 201:
                            acked.add(body["event_id"])
                except (TimeoutError, aiohttp.ClientError):
                    return
                if len(acked) >= stop_after and not killed:
                    killed = True
                    kill()

        await asyncio.gather(*(client() for _ in range(HAMMER_CLIENTS)))
    return acked


# Traffic through an outage: who got what, when the 503s came and went.

CONNECTIONS = 16  # of failover_traffic
CLIENT_TIMEOUT_S = 10  # a request slower than this counts as a hang
KILL_AFTER_ACKS = 400
CALM_S = 2.0  # recovered: this long without a 503 after the last one
DEADLINE_S = 60.0
# Asynchronous replication: what a master acknowledged but had not sent to its replica
# when it died is lost. Each connection has one request in flight, so at the kill instant
# at most CONNECTIONS acks can be ahead of the replica on loopback (measured: 0 lost).
LOSS_BOUND = CONNECTIONS


@dataclass
class Traffic:
    acked: list[dict[str, Any]] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)  # 503: not acknowledged
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    bad: list[str] = field(default_factory=list)  # anything but 201/503, or a hang
    killed_at: float | None = None
    first_503: float | None = None
    last_503: float | None = None
    slowest_s: float = 0.0
    recovered: bool = False


async def failover_traffic(url: str, kill: Any) -> Traffic:
    """New events from CONNECTIONS clients; kill after KILL_AFTER_ACKS; run until recovered."""
    t = Traffic()
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)

    def done(now: float) -> bool:
        if t.killed_at is None:
            return False
        if t.last_503 is not None and now - t.last_503 > CALM_S:
            t.recovered = True
            return True
        return now - t.killed_at > DEADLINE_S

    async with aiohttp.ClientSession(url, timeout=timeout, connector=connector) as session:

        async def client() -> None:
            while not done(time.monotonic()):
                body = event(user=f"user-{next(counter)}")
                sent = time.monotonic()
                try:
                    async with session.post("/events", data=orjson.dumps(body), headers=JSON) as r:
                        await r.read()
                        status, retry_after = r.status, r.headers.get("retry-after")
                        ctype = r.headers.get("content-type")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    t.bad.append(f"{type(exc).__name__} after {time.monotonic() - sent:.1f} s")
                    continue
                now = time.monotonic()
                t.slowest_s = max(t.slowest_s, now - sent)
                t.statuses[status] += 1
                if status == 201:
                    t.acked.append(body)
                    t.acked_at.append(now)
                    if len(t.acked) >= KILL_AFTER_ACKS and t.killed_at is None:
                        t.killed_at = time.monotonic()
                        kill()
                elif status == 503 and retry_after == "1" and ctype == "application/problem+json":
                    t.refused.append(body)
                    t.first_503 = t.first_503 or now
                    t.last_503 = now
                    await asyncio.sleep(0.05)  # a client backs off a little
                else:
                    t.bad.append(f"{status} retry-after={retry_after} {ctype}")

        await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
    return t


# The archive, read back.


def archive_ids(root: Path) -> collections.Counter[str]:
    """How often each event id stands in the archive under ``root``."""
    # Complete lines only: a torn tail is no event (the archiver cuts it off on its next write).
    files = sorted(root.glob("*/*/*/*.jsonl"))
    lines = [ln for f in files for ln in f.read_bytes().split(b"\n")[:-1]]
    return collections.Counter(orjson.loads(ln)["event_id"] for ln in lines)


def wait_archived(url: str, timeout_s: float = 60) -> dict[str, Any]:
    """Poll /persistent/status until nothing is left in the streams; the last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = HTTP.get(f"{url}/persistent/status", timeout=5).json()
        stats = status["stats"]
        if stats["stream_length"] == 0 and stats["pending_messages"] == 0:
            return status
        assert time.monotonic() < deadline, f"archive did not catch up: {status}"
        time.sleep(0.1)


def answers(svc: ServiceProcess, minutes: list[datetime]) -> list[Any]:
    """Everything the read API says about the given minutes (compared before/after rebuild)."""
    # Only the given minutes' rows: the 1440-minute window moves when the minute turns.
    wanted = {m.strftime("%Y-%m-%dT%H:%M:00Z") for m in minutes}
    rows = HTTP.get(f"{svc.url}/analytics/page_views_per_minute?minutes=1440", timeout=10).json()
    out = [[r for r in rows if r["minute_timestamp"] in wanted]]
    for m in minutes:
        out.append(HTTP.get(f"{svc.url}/analytics/minute-buckets/{seed_key(m)}", timeout=10).json())
    return out


def assert_rebuild_reproduces(
    svc: ServiceProcess, flush: Callable[[], None], env: dict[str, str], minutes: list[datetime]
) -> None:
    """``flush`` empties the engine; ``rebuild`` from the archive brings back every answer
    about ``minutes`` as it was, and ``verify`` then finds no difference."""
    before = answers(svc, minutes)
    assert sum(r["count"] for r in before[0]) > 0
    flush()
    assert answers(svc, minutes) != before
    done = cli(["rebuild"], env)
    assert done.returncode == 0, done.stderr
    assert "events/s" in done.stdout
    assert answers(svc, minutes) == before
    checked = cli(["verify"], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 differ" in checked.stdout


# -- drop-in ingest (Segment, Plausible, the script tag) ------------------------------


def total(svc: ServiceProcess, event_type: str, since: datetime) -> int:
    """Events of one type counted since ``since`` (minute buckets, exact)."""
    params = {"event_type": event_type, "from": z(since - timedelta(minutes=1)),
              "to": z(datetime.now(UTC) + timedelta(minutes=2))}  # fmt: skip
    reply = HTTP.get(f"{svc.url}/analytics/timeseries", params=params)
    assert reply.status_code == 200, reply.text
    count: int = reply.json()["total"]["count"]
    return count


def archived(data_dir: Path) -> list[dict[str, Any]]:
    """Every record in the service's hourly archive files."""
    records = []
    for path in sorted(data_dir.glob("persistent_events/**/*.jsonl")):
        records += [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return records


class LossyProxy:
    """Forwards each HTTP request to the service, and for the first ``lose`` requests
    closes the client's connection instead of passing the answer on: the events were
    stored, the client never heard it, so it retries (the case dedup exists for).

    One request per connection (``Connection: close`` both ways); bounded by timeouts.
    """

    def __init__(self, upstream_port: int, lose: int) -> None:
        self.upstream_port = upstream_port
        self.lose = lose
        self.forwarded = 0
        self.lost = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        kept = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() != b"connection":
                kept.append(line)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + body

    def _one(self, client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            request = self._read_request(client)
            if not request:
                return
            with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10) as up:
                up.sendall(request)
                answer = b""
                while chunk := up.recv(65536):
                    answer += chunk
            with self._lock:
                self.forwarded += 1
                lose = self.lost < self.lose
                if lose:
                    self.lost += 1
            if lose:
                # RST instead of FIN: the client sees a reset, as when a network drops.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            client.sendall(answer)


# -- browsers and node clients ----------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "tests" / "node"
# A desktop Chrome: HeadlessChrome's own User-Agent is (rightly) counted as a bot.
DESKTOP_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        # .ci/run installs Debian's chromium: in CI a missing browser is a failure.
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return binary


def node_clients() -> Path:
    """tests/node/node_modules as tests/node/package-lock.json pins it (npm ci, once)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node/npm missing in CI (.ci/run installs them)")
        pytest.skip("node and npm not installed (apt-get install nodejs npm)")
    stamp = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                       check=True, timeout=300)  # fmt: skip
    return NODE_DIR / "node_modules"


class Site:
    """A static web site on its own port (another origin than the service) that records
    the query of every ``/done`` request its pages make when they are finished."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: list[dict[str, list[str]]] = []
        site = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, directory=str(site.root), **kw)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/done":
                    site.done.append(urllib.parse.parse_qs(url.query))
                    self.send_response(204)
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_done(self, n: int = 1, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.done) < n:
            assert time.monotonic() < deadline, "the page did not finish"
            time.sleep(0.1)


@contextlib.contextmanager
def browsing(url: str, profile: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Headless Chromium showing ``url`` in real time, until the block ends."""
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-agent={DESKTOP_CHROME}", f"--user-data-dir={profile}", url]  # fmt: skip
    log = open(profile.parent / f"{profile.name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the browser's processes
        proc.wait(timeout=10)
        log.close()


def wait_for(
    check: Callable[[], bool], timeout_s: float = 30.0, on_fail: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"condition not met in time: {on_fail()}"
        time.sleep(0.2)
