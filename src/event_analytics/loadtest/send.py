"""Sending: page views over many keep-alive connections, with what came back per event.

Every event gets a fresh random id (a rerun never collides with an earlier one); users
are ``u0..u{U-1}``, pages a small fixed set, timestamps the current UTC time. What the
service answered is kept per event, so ``check`` can compare its counts with a model of
exactly the events it acknowledged.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import aiohttp
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from event_analytics.config import client_headers
from event_analytics.timebucket import Interval, floor, iso_z

PAGES = tuple(
    f"https://example.com{p}"
    for p in ("/", "/pricing", "/docs", "/blog", "/blog/launch", "/signup", "/login", "/about")
)
JSON = {"content-type": "application/json"}


class CannotRun(Exception):
    """The load test cannot start or go on (service unreachable, endpoint missing)."""


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # 201: stored now
    DUPLICATE = "duplicate"  # 200: stored before, nothing changed
    REJECTED = "rejected"  # 4xx: refused, not stored
    UNAVAILABLE = "unavailable"  # 503/429: not stored, retry later
    ERROR = "error"  # no answer or another 5xx: stored or not, unknown


@dataclass(frozen=True, slots=True)
class Options:
    url: str = "http://127.0.0.1:8000"
    events: int = 1000
    concurrency: int = 32
    batch: int | None = None  # None: POST /events one by one; B: B events per /events/batch
    rate: float = 0.0  # events per second over all connections; 0 = as fast as it goes
    duplicates: float = 0.0  # share of the events sent that resend an earlier one
    users: int = 100
    seed: int | None = None
    timeout_s: float = 10.0


@dataclass(slots=True)
class SentEvent:
    """One distinct event and what is known about whether the service stored it."""

    event_id: str
    user_id: str
    minute: datetime
    body: bytes
    # True: some copy was acknowledged (201/200). False: every answer said "not stored".
    # None: a copy got no answer, so it may or may not be stored.
    stored: bool | None = False


@dataclass(slots=True)
class Tally:
    """What happened to every event copy and request the load test sent."""

    requests: int = 0
    sent: int = 0
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    latencies_s: list[float] = field(default_factory=list)
    resends: int = 0
    # Resends of an event already acknowledged that came back 201: counted twice.
    resends_recounted: int = 0
    elapsed_s: float = 0.0
    events: list[SentEvent] = field(default_factory=list)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def plan_resends(events: int, share: float, rng: random.Random) -> list[bool]:
    """Which of the ``events`` slots resend an earlier event: exactly round(share * events)."""
    count = min(round(share * events), events - 1)
    flags = [False] * events
    # Slot 0 has nothing before it to resend.
    for slot in rng.sample(range(1, events), count) if count > 0 else ():
        flags[slot] = True
    return flags


class LoadTest:
    """Sends the events, keeps the tally; ``run`` returns it."""

    def __init__(self, options: Options, console: Console) -> None:
        self.o = options
        self.console = console
        # Test data, not secrets: a seedable generator makes a run reproducible.
        self.rng = random.Random(options.seed)  # noqa: S311
        self.resend_slots = plan_resends(options.events, options.duplicates, self.rng)
        self.tally = Tally()
        self._next_slot = 0
        self._acked: list[SentEvent] = []
        self._stopped = False

    def _new_event(self) -> SentEvent:
        now = datetime.now(UTC)
        event_id = str(uuid.uuid4())
        user = f"u{self.rng.randrange(self.o.users)}"
        body = orjson.dumps(
            {
                "event_id": event_id,
                "user_id": user,
                "timestamp": iso_z(now),
                "event_type": "page_view",
                "payload": {"page_url": self.rng.choice(PAGES)},
            }
        )
        sent = SentEvent(event_id, user, floor(now, Interval.MINUTE), body)
        self.tally.events.append(sent)
        return sent

    def _reserve(self) -> range:
        """The slots of the next request (empty when all are taken)."""
        first = self._next_slot
        if not self._stopped:
            self._next_slot = min(first + (self.o.batch or 1), self.o.events)
        return range(first, self._next_slot)

    def _build(self, slots: range) -> list[tuple[SentEvent, bool]]:
        """The slots' events, each with 'was already acknowledged' for resends."""
        chunk: list[tuple[SentEvent, bool]] = []
        for slot in slots:
            # (Under --rate a later slot may be built first: then there is nothing to resend.)
            if self.resend_slots[slot] and self.tally.events:
                self.tally.resends += 1
                # Prefer an acknowledged event: its resend must come back as a duplicate.
                again = self.rng.choice(self._acked or self.tally.events)
                chunk.append((again, again.stored is True))
            else:
                chunk.append((self._new_event(), False))
        return chunk

    async def _post_one(self, session: aiohttp.ClientSession, body: bytes) -> list[Outcome]:
        async with session.post("/events", data=body, headers=JSON) as r:
            await r.read()
            return [_outcome_of_status(r.status)]

    async def _post_batch(
        self, session: aiohttp.ClientSession, bodies: list[bytes]
    ) -> list[Outcome]:
        payload = b'{"events":[' + b",".join(bodies) + b"]}"
        async with session.post("/events/batch", data=payload, headers=JSON) as r:
            raw = await r.read()
            if r.status == 404:
                self._stopped = True
                raise CannotRun(
                    "the service answered 404 for POST /events/batch: it has no batch "
                    "endpoint yet; run without --batch to send events one by one"
                )
            if not 200 <= r.status < 300:
                return [_outcome_of_status(r.status)] * len(bodies)
        answer = orjson.loads(raw)
        results = answer.get("results") if isinstance(answer, dict) else answer
        if not isinstance(results, list) or len(results) != len(bodies):
            return [Outcome.ERROR] * len(bodies)
        return [_outcome_of_result(item) for item in results]

    def _record(self, chunk: list[tuple[SentEvent, bool]], outcomes: list[Outcome]) -> None:
        for (sent, was_acked), outcome in zip(chunk, outcomes, strict=True):
            self.tally.outcomes[outcome] += 1
            if outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
                if sent.stored is not True:
                    self._acked.append(sent)
                sent.stored = True
                if was_acked and outcome is Outcome.ACCEPTED:
                    self.tally.resends_recounted += 1
            elif outcome is Outcome.ERROR and sent.stored is False:
                sent.stored = None

    async def _client(
        self, session: aiohttp.ClientSession, start: float, progress: Progress, task: TaskID
    ) -> None:
        while slots := self._reserve():
            if self.o.rate > 0:
                # The schedule is shared: event k is due k/R seconds after the start.
                await asyncio.sleep(
                    max(0.0, start + slots.start / self.o.rate - time.perf_counter())
                )
            # Built only now, so that its timestamp is the time it is sent.
            chunk = self._build(slots)
            bodies = [sent.body for sent, _ in chunk]
            began = time.perf_counter()
            try:
                if self.o.batch:
                    outcomes = await self._post_batch(session, bodies)
                else:
                    outcomes = await self._post_one(session, bodies[0])
            except (aiohttp.ClientError, TimeoutError):
                outcomes = [Outcome.ERROR] * len(chunk)
            self.tally.latencies_s.append(time.perf_counter() - began)
            self.tally.requests += 1
            self.tally.sent += len(chunk)
            self._record(chunk, outcomes)
            progress.advance(task, len(chunk))

    async def run(self) -> Tally:
        """Send every event; raises CannotRun when the service cannot take the test."""
        connector = aiohttp.TCPConnector(limit=self.o.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.o.timeout_s)
        async with aiohttp.ClientSession(
            self.o.url, connector=connector, timeout=timeout, headers=client_headers()
        ) as s:
            columns = (
                TextColumn("[bold]sending"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("events"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=self.console, transient=False) as progress:
                task = progress.add_task("send", total=self.o.events)
                start = time.perf_counter()
                clients = (
                    self._client(s, start, progress, task) for _ in range(self.o.concurrency)
                )
                results = await asyncio.gather(*clients, return_exceptions=True)
                self.tally.elapsed_s = time.perf_counter() - start
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return self.tally


async def check_ready(session: aiohttp.ClientSession) -> None:
    """CannotRun unless /health/ready answers 200."""
    try:
        async with session.get("/health/ready") as r:
            if r.status != 200:
                raise CannotRun(f"the service is not ready: /health/ready answered {r.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CannotRun(f"cannot reach the service: {exc or type(exc).__name__}") from None


def _outcome_of_status(status: int) -> Outcome:
    if status == 201:
        return Outcome.ACCEPTED
    if status == 200:
        return Outcome.DUPLICATE
    if status in (429, 503):
        return Outcome.UNAVAILABLE
    if 400 <= status < 500:
        return Outcome.REJECTED
    return Outcome.ERROR


def _outcome_of_result(item: object) -> Outcome:
    status = item.get("status") if isinstance(item, dict) else None
    try:
        return Outcome(str(status))
    except ValueError:
        return Outcome.ERROR
