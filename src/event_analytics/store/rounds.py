"""Big reads in bounded rounds, so that no single engine call holds the engine for long.

The engine runs one command at a time: a read that merges many entries in one call (a
union of 1,440 minute sets, the pages of 240 minutes) makes every ingest call wait until
it ends. Here such a read is cut into calls of at most ``budget`` entries each. A round
sends at most one budget's worth per shard (shards on other cluster masters work in
parallel), and the next round goes out only once this one answered, so other clients'
calls run in between. The merging happens in Python.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rx
from redis.commands.core import AsyncScript

from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.scripts import Call, call_per_shard


@dataclass(frozen=True, slots=True)
class Held:
    """One structure whose members a union needs: a users set, or a page_users zset (then
    only ``page``'s range of it), holding about ``size`` entries."""

    shard: int
    name: str
    size: int


async def script_rounds(
    client: Client, script: AsyncScript, calls: Sequence[Sequence[Call]], *, read_only: bool
) -> list[list[Any]]:
    """The replies of each shard's calls (``calls[shard]``), sent one call per shard and
    round; the caller sizes each call."""
    replies: list[list[Any]] = [[] for _ in calls]
    for round_ in range(max((len(c) for c in calls), default=0)):
        shards = [s for s, c in enumerate(calls) if round_ < len(c)]
        async with engine_errors():
            out = await call_per_shard(
                client, script, [calls[s][round_] for s in shards], read_only=read_only
            )
        for shard, reply in zip(shards, out, strict=True):
            replies[shard].append(reply)
    return replies


async def members(
    client: Client,
    script: AsyncScript,
    held: Sequence[Held],
    page: str | None,
    budget: int,
    *,
    read_only: bool,
) -> list[list[bytes]]:
    """The members of each structure, fetched in rounds of at most ``budget`` entries per
    shard: small structures whole, several in one call (members.lua), a bigger one in
    pages of ``budget`` (SSCAN, ZRANGEBYLEX from the last member read), alone.

    Sizes may have grown since they were read (ingest goes on): a call then returns a
    few more entries than planned, which changes nothing about its bound.
    """
    out: list[list[bytes]] = [[] for _ in held]
    queues: dict[int, deque[int]] = {}
    for i, h in enumerate(held):
        if h.size:
            queues.setdefault(h.shard, deque()).append(i)
    # A structure being paged: its SSCAN cursor, or the last zset member read.
    resume: dict[int, int | bytes] = {}
    lo = f"[{page}\0".encode() if page is not None else b""
    hi = f"({page}\1".encode() if page is not None else b""
    args = ["set", ""] if page is None else ["page", page]
    command = "EVALSHA_RO" if read_only else "EVALSHA"
    while any(queues.values()):
        # In the pipeline's order: a page of one structure (int), or a call reading
        # several whole (their list).
        sent: list[int | list[int]] = []
        async with engine_errors(), client.pipeline(transaction=False) as pipe:
            for queue in queues.values():
                room, whole = budget, []
                while queue:
                    i = queue[0]
                    h = held[i]
                    if i not in resume and h.size <= room:
                        queue.popleft()
                        room -= h.size
                        whole.append(i)
                    elif room == budget:
                        # Too big for one call: a page of it fills this shard's round.
                        if page is None:
                            pipe.sscan(h.name, int(resume.get(i, 0)), count=budget)
                        else:
                            last = resume.get(i)
                            start = b"(" + last if isinstance(last, bytes) else lo
                            pipe.zrangebylex(h.name, start, hi, start=0, num=budget)
                        sent.append(i)
                        break
                    else:
                        break
                if whole:
                    names = [held[i].name for i in whole]
                    pipe.execute_command(command, script.sha, len(names), *names, *args)
                    sent.append(whole)
            replies = await pipe.execute(raise_on_error=False)
            for n, reply in enumerate(replies):
                if isinstance(reply, rx.NoScriptError):  # not run: load it and run it
                    names = [held[i].name for i in sent[n]]  # type: ignore[union-attr]
                    (replies[n],) = await call_per_shard(
                        client, script, [(names, args)], read_only=read_only
                    )
                elif isinstance(reply, Exception):
                    raise reply
        for what, reply in zip(sent, replies, strict=True):
            if isinstance(what, list):
                for i, chunk in zip(what, reply, strict=True):
                    out[i].extend(chunk)
            elif page is None:
                cursor, chunk = reply
                out[what].extend(chunk)
                if int(cursor) == 0:
                    _done(queues, held[what].shard, what, resume)
                else:
                    resume[what] = int(cursor)
            else:
                out[what].extend(reply)
                if len(reply) < budget:
                    _done(queues, held[what].shard, what, resume)
                else:
                    resume[what] = reply[-1]
    return out


def _done(queues: dict[int, deque[int]], shard: int, i: int, resume: dict[int, Any]) -> None:
    queues[shard].popleft()
    resume.pop(i, None)
