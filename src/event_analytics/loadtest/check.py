"""Checking: the service's minute buckets against a model of the events it acknowledged.

The model counts each acknowledged event id once, in the UTC minute of its timestamp.
The start minute may already hold events from before the run, so it is read first and
its numbers are added: counts stay exact; its unique users, which may overlap with the
run's, must lie between the larger of the two and their sum.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from event_analytics.loadtest.send import JSON, CannotRun, Outcome, SentEvent, Tally
from event_analytics.timebucket import seed_bucket_key

# (count, unique users) of one minute bucket.
Bucket = tuple[int, int]


@dataclass(frozen=True, slots=True)
class MinuteCheck:
    minute: datetime
    expected_count: int
    count: int
    users_low: int
    users_high: int
    users: int

    @property
    def ok(self) -> bool:
        return self.count == self.expected_count and self.users_low <= self.users <= self.users_high


@dataclass(frozen=True, slots=True)
class Verdict:
    minutes: list[MinuteCheck]
    problems: list[str]
    resolved: int

    @property
    def passed(self) -> bool:
        return not self.problems and all(m.ok for m in self.minutes)


def model(events: Iterable[SentEvent]) -> dict[datetime, tuple[int, set[str]]]:
    """Per minute touched: how many acknowledged events, and their distinct users."""
    counts: dict[datetime, int] = defaultdict(int)
    users: dict[datetime, set[str]] = defaultdict(set)
    for sent in events:
        counts[sent.minute] += 0  # a minute with only refused events must stay empty
        if sent.stored is True:
            counts[sent.minute] += 1
            users[sent.minute].add(sent.user_id)
    return {m: (counts[m], users[m]) for m in sorted(counts)}


def compare(
    expected: dict[datetime, tuple[int, set[str]]],
    baseline: dict[datetime, Bucket],
    observed: dict[datetime, Bucket],
) -> list[MinuteCheck]:
    """One row per minute: the model plus what the minute held before, against the service."""
    rows = []
    for minute, (count, users) in expected.items():
        before_count, before_users = baseline.get(minute, (0, 0))
        got_count, got_users = observed[minute]
        rows.append(
            MinuteCheck(
                minute=minute,
                expected_count=before_count + count,
                count=got_count,
                users_low=max(before_users, len(users)),
                users_high=before_users + len(users),
                users=got_users,
            )
        )
    return rows


async def read_buckets(
    session: aiohttp.ClientSession, minutes: Sequence[datetime]
) -> dict[datetime, Bucket]:
    """(count, unique users) of each page_view minute, from the service."""

    async def one(minute: datetime) -> Bucket:
        path = f"/analytics/minute-buckets/{seed_bucket_key('page_view', minute)}"
        async with session.get(path) as r:
            if r.status != 200:
                raise CannotRun(f"GET {path} answered {r.status}: {(await r.text())[:200]}")
            body = await r.json()
            return int(body["count"]), int(body["unique_users"])

    try:
        found = await asyncio.gather(*(one(m) for m in minutes))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CannotRun(f"cannot read the counts back: {exc or type(exc).__name__}") from None
    return dict(zip(minutes, found, strict=True))


async def resolve_unknown(session: aiohttp.ClientSession, events: Iterable[SentEvent]) -> int:
    """Resend once each event whose answer was lost; returns how many were settled.

    Safe because the id is the same: 201 means the first copy never landed, 200 that it
    did; either way the event is now stored exactly once.
    """
    settled = 0
    for sent in events:
        if sent.stored is not None:
            continue
        try:
            async with session.post("/events", data=sent.body, headers=JSON) as r:
                await r.read()
                if r.status in (200, 201):
                    sent.stored = True
                    settled += 1
        except (aiohttp.ClientError, TimeoutError):
            pass
    return settled


async def verify(
    session: aiohttp.ClientSession, tally: Tally, baseline: dict[datetime, Bucket]
) -> Verdict:
    """Settle unknown outcomes, read every minute touched and compare it with the model."""
    resolved = await resolve_unknown(session, tally.events)
    expected = model(tally.events)
    observed = await read_buckets(session, list(expected))
    problems = []
    acknowledged = sum(1 for e in tally.events if e.stored is True)
    if acknowledged == 0:
        problems.append("the service acknowledged no event: there is nothing to check")
    unknown = sum(1 for e in tally.events if e.stored is None)
    if unknown:
        problems.append(f"{unknown} events got no answer, even when resent: counts unknowable")
    if tally.resends_recounted:
        problems.append(
            f"{tally.resends_recounted} resends of acknowledged events were accepted "
            "again instead of answered as duplicates"
        )
    if tally.outcomes[Outcome.REJECTED]:
        problems.append(f"{tally.outcomes[Outcome.REJECTED]} valid events were rejected")
    return Verdict(compare(expected, baseline, observed), problems, resolved)
