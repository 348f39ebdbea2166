"""Erasure jobs in the engine: the queue ``POST /api/v1/admin/forget`` adds to, the
state ``GET /api/v1/admin/forget/{id}`` reads, and the lease of the one worker that runs
them (forget_worker.py).

A job is a hash (``Keys.forget_job``); its id waits in a list (``Keys.forget_queue``)
from its submission until it has ended, so the head of the list is the job running or
the next one, and a worker killed mid-job (the service killed with it) finds it there
again after a restart. The raw user ids stay in the job only until it ends (then its
hashes remain, as in the audit record); an ended job is kept ``KEEP_S``, then expires.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from event_analytics.errors import ErasureQueueFull
from event_analytics.keys import Keys
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.scripts import Lua, register
from event_analytics.timebucket import iso_z

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_QUEUED = 100  # jobs waiting or running; each names up to forgetting.MAX_USERS ids
KEEP_S = 7 * 86400  # an ended job's state, for the client that polls it
STATES = ("queued", "running", "done", "failed")


@dataclass(frozen=True)
class Job:
    """An erasure job as a client sees it: never the raw ids."""

    id: str
    state: str
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    user_sha256: list[str]
    attempts: int  # times a worker started it (more than 1: resumed after a restart)
    position: int | None  # in the queue, while queued (1: runs next)
    progress: dict[str, Any]
    result: dict[str, Any] | None  # the audit record, once done
    error: str | None  # why it failed, once failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "user_sha256": self.user_sha256,
            "attempts": self.attempts,
            "position": self.position,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
        }


def _now() -> str:
    return iso_z(datetime.now(UTC))


def _text(raw: dict[bytes, bytes], name: str) -> str | None:
    value = raw.get(name.encode())
    return None if value is None else value.decode()


class ForgetJobs:
    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._submit = register(client, Lua.FORGET_SUBMIT)
        self._renew = register(client, Lua.LEASE_RENEW)
        self._release = register(client, Lua.LEASE_RELEASE)

    async def submit(self, users: list[str], user_sha256: list[str]) -> Job:
        """Queue a job erasing ``users``; ErasureQueueFull past MAX_QUEUED."""
        job_id = secrets.token_hex(16)
        now = _now()
        fields = {
            "state": "queued",
            "submitted_at": now,
            "users": orjson.dumps(users),
            "user_sha256": orjson.dumps(user_sha256),
            "attempts": 0,
            "progress": b"{}",
        }
        args: list[Any] = [MAX_QUEUED, job_id]
        for name, value in fields.items():
            args += [name, value]
        keys = [self.keys.forget_queue(), self.keys.forget_job(job_id)]
        async with engine_errors():
            place = int(await self._submit(keys=keys, args=args))
        if not place:
            raise ErasureQueueFull(f"{MAX_QUEUED} erasure jobs are queued or running already")
        # As it was queued (the worker may have taken it up since).
        return Job(job_id, "queued", now, None, None, user_sha256, 0, place, {}, None, None)

    async def get(self, job_id: str) -> Job | None:
        """The job, or None (unknown, or ended more than KEEP_S ago)."""
        if not JOB_ID.match(job_id):
            return None
        async with engine_errors():
            raw: Any = await self.client.hgetall(self.keys.forget_job(job_id))
            state = raw.get(b"state", b"").decode()
            place: Any = None
            if state == "queued":
                place = await self.client.lpos(self.keys.forget_queue(), job_id)
        if state not in STATES:
            return None
        result = _text(raw, "result")
        return Job(
            id=job_id,
            state=state,
            submitted_at=_text(raw, "submitted_at") or "",
            started_at=_text(raw, "started_at"),
            finished_at=_text(raw, "finished_at"),
            user_sha256=orjson.loads(raw.get(b"user_sha256", b"[]")),
            attempts=int(raw.get(b"attempts", b"0")),
            position=None if place is None else int(place) + 1,
            progress=orjson.loads(raw.get(b"progress", b"{}")),
            result=None if result is None else orjson.loads(result),
            error=_text(raw, "error"),
        )

    async def head(self) -> str | None:
        """The id of the job running or next, if any."""
        async with engine_errors():
            got = await self.client.lindex(self.keys.forget_queue(), 0)
        return None if got is None else got.decode() if isinstance(got, bytes) else str(got)

    async def users(self, job_id: str) -> list[str] | None:
        """The raw ids of a job that has not ended, or None."""
        async with engine_errors():
            raw = await self.client.hget(self.keys.forget_job(job_id), "users")
        return None if raw is None else list(orjson.loads(raw))

    async def start(self, job_id: str) -> int:
        """Mark the job running; the times it was started, this one included."""
        key = self.keys.forget_job(job_id)
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, "state", "running")
            pipe.hsetnx(key, "started_at", _now())
            pipe.hincrby(key, "attempts", 1)
            replies = await pipe.execute()
        return int(replies[2])

    async def report(self, job_id: str, progress: dict[str, Any]) -> None:
        async with engine_errors():
            await self.client.hset(self.keys.forget_job(job_id), "progress", orjson.dumps(progress))

    async def end(
        self,
        job_id: str,
        progress: dict[str, Any],
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Done (with its audit record) or failed (with why); off the queue, its raw ids
        gone, kept KEEP_S. In that order: a worker killed between finds an ended job at
        the head and only takes it off."""
        key = self.keys.forget_job(job_id)
        fields: dict[Any, Any] = {
            "state": "failed" if error is not None else "done",
            "finished_at": _now(),
            "progress": orjson.dumps(progress),
        }
        if result is not None:
            fields["result"] = orjson.dumps(result)
        if error is not None:
            fields["error"] = error
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.hdel(key, "users")
            pipe.expire(key, KEEP_S)
            await pipe.execute()
        await self.drop(job_id)

    async def drop(self, job_id: str) -> None:
        """Take an ended job off the queue."""
        async with engine_errors():
            await self.client.lrem(self.keys.forget_queue(), 1, job_id)

    async def take_lease(self, owner: str, ttl_ms: int) -> bool:
        async with engine_errors():
            return bool(await self.client.set(self.keys.forget_lease(), owner, nx=True, px=ttl_ms))

    async def renew_lease(self, owner: str, ttl_ms: int) -> bool:
        async with engine_errors():
            return bool(await self._renew(keys=[self.keys.forget_lease()], args=[owner, ttl_ms]))

    async def drop_lease(self, owner: str) -> None:
        async with engine_errors():
            await self._release(keys=[self.keys.forget_lease()], args=[owner])
