"""The one place that talks to Redis/Valkey: a single node or a cluster, the same calls."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from event_analytics import metrics
from event_analytics.config import Settings
from event_analytics.errors import (
    ClusterForming,
    EngineFull,
    EngineRefused,
    StorageOutcomeUnknown,
    StorageUnavailable,
)
from event_analytics.keys import OTHER_PAGE, Keys, page_digest
from event_analytics.store import claims
from event_analytics.store.cluster import cluster_info, connect_cluster
from event_analytics.store.prepared import Bucket, Caps, Outcome, PreparedEvent
from event_analytics.store.scripts import Call, Lua, call_per_shard, register

# A single-node client or a cluster client: the commands used here exist on both.
Client = aioredis.Redis | RedisCluster

# Replies meaning "the engine cannot serve this now; the same request may succeed later".
# redis-py maps each reply code to its own class (LOADING, a ConnectionError subclass, is
# caught as unreachable before these).
_BUSY = (
    rx.ReadOnlyError,  # READONLY: a replica, or a master demoted by a failover
    rx.ClusterError,  # CLUSTERDOWN, MASTERDOWN, and the cluster client's own give-ups
    rx.TryAgainError,  # TRYAGAIN: a slot migrating
    rx.AskError,
    rx.SlotNotCoveredError,  # no master serves the slot (a failover in progress)
    # The script did not run (flushed, or an engine restart lost it, between the load and
    # the call): nothing was written, and the next call loads it again.
    rx.NoScriptError,
)
# The two transient replies redis-py has no class for: they arrive as ResponseError with
# the code as the first word.
_BUSY_UNMAPPED = ("MISCONF", "NOREPLICAS")
# Replies refusing this client whatever it retries (the engine runs, its configuration
# keeps the service out), with what the operator does about each. DENIED arrives as a
# plain ResponseError to the first command of a connection; NOAUTH and WRONGPASS as
# AuthenticationError (a ConnectionError), NOPERM as NoPermissionError.
_REFUSED = {
    "DENIED": (
        "it runs in protected mode (no password for its default user, and the service "
        "connects from another address than loopback): give the engine a password "
        "(requirepass, or an ACL user) and put it in REDIS_URL (redis://:PASSWORD@host:port), "
        "or bind it to a trusted network with protected-mode no"
    ),
    "NOAUTH": "it requires a password: put it in REDIS_URL (redis://:PASSWORD@host:port)",
    "WRONGPASS": "the user or password in REDIS_URL is not the engine's: correct them",
    "NOPERM": (
        "the ACL user in REDIS_URL lacks a command or key permission: grant it the "
        "service's keys (~PREFIX*) and commands (docs/deploy.md)"
    ),
}


# Calls of more events than this write per distinct key (one INCRBY, one variadic SADD...),
# smaller ones per event. Measured with benchmarks/script_cost.py, interleaved, engine CPU
# per event, per event / per key: 1: 478 / 480, 493 / 449; 2: 266 / 275, 225 / 225;
# 4: 181 / 174, 168 / 135; 8: 115 / 108, 109 / 86; 16: 70 / 59, 66 / 58 µs. From 4 events
# up the aggregated path's bookkeeping pays; below it is a wash.
AGGREGATE_ABOVE = 4
# Dedup memory is kept in generations of (window / this) seconds: an id is remembered for
# the window at least and one generation more at most (so 1.5 x the window's ids at most),
# for one lookup per generation and call.
DEDUP_GENERATIONS = 2


# redis-py raises a bare RedisClusterException when no seed node answers at all.
_CLUSTER_UNREACHABLE = "Redis Cluster cannot be connected"
_CLUSTER_UNCOVERED = "All slots are not covered"  # ... 8001 of 16384 covered...
_CONNECTION_CODE = ("redis/asyncio/connection.py", "uvloop/", "asyncio/streams.py")


def _raised_in_connection(exc: BaseException) -> bool:
    """Whether ``exc`` came from the socket layer of the client (not from our code)."""
    return any(part in _raised_in(exc) for part in _CONNECTION_CODE)


def _raised_in(exc: BaseException) -> str:
    """The file of the innermost frame ``exc`` was raised in."""
    tb, where = exc.__traceback__, ""
    while tb is not None:
        where, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return where


def _sent(exc: BaseException) -> bool:
    """Whether a connection error may have come after the command was sent.

    redis-py says "... connecting to ..." when it never got a connection, so nothing
    was sent; any other connection error or timeout may follow a command the engine ran.
    """
    return "connecting to" not in str(exc)


@contextlib.asynccontextmanager
async def engine_errors(*, write: bool = False) -> AsyncIterator[None]:
    """Turn an outage of the engine into StorageUnavailable (HTTP 503 in the API).

    ``write``: a lost reply of a write is StorageOutcomeUnknown, never "nothing stored".
    """
    try:
        yield
    except (rx.AuthenticationError, rx.NoPermissionError) as exc:
        # Before ConnectionError, AuthenticationError's base: not an outage, a refusal.
        raise _refused(exc) from exc
    except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
        metrics.engine_error("unreachable")
        if write and _sent(exc):
            raise StorageOutcomeUnknown(f"storage did not answer: {type(exc).__name__}") from exc
        raise StorageUnavailable(f"storage unreachable: {type(exc).__name__}") from exc
    except rx.OutOfMemoryError as exc:
        # OOM: at maxmemory with noeviction. A script is refused at its first write, so
        # nothing of it was written.
        metrics.engine_error("full")
        raise EngineFull("storage full: OOM") from exc
    except _BUSY as exc:
        metrics.engine_error("busy")
        code = getattr(exc, "status_code", None) or type(exc).__name__
        raise StorageUnavailable(f"storage busy: {code}") from exc
    except rx.ResponseError as exc:
        code = str(exc).split(" ", 1)[0]
        if code in _BUSY_UNMAPPED:
            metrics.engine_error("busy")
            raise StorageUnavailable(f"storage busy: {code}") from exc
        if code in _REFUSED:
            raise _refused(exc) from exc
        raise
    except KeyError as exc:
        # redis-py's cluster pipeline looks a key's slot up in its slot map unchecked: a
        # slot no master serves (a cluster still forming) raises KeyError, where a single
        # command raises SlotNotCoveredError. Nothing was sent for it.
        if not _raised_in(exc).endswith("redis/asyncio/cluster.py"):
            raise
        metrics.engine_error("busy")
        raise ClusterForming("unknown", None) from exc
    except (RuntimeError, AttributeError) as exc:
        # When a node dies, redis-py's cluster client may close a pooled connection while
        # another request is writing to it: uvloop then raises RuntimeError ("handler is
        # closed"), or the connection's writer is already None (AttributeError). redis-py
        # has no class for these, so where they were raised tells them from a bug of ours.
        # The request was not answered by the engine: a 503 (retry) is the truthful reply.
        if not _raised_in_connection(exc):
            raise
        metrics.engine_error("unreachable")
        if write:
            raise StorageOutcomeUnknown("storage did not answer: connection closed") from exc
        raise StorageUnavailable("storage unreachable: connection closed") from exc
    except rx.RedisClusterException as exc:
        if str(exc).startswith(_CLUSTER_UNCOVERED):
            metrics.engine_error("busy")
            covered = re.search(r"(\d+) of 16384", str(exc))
            raise ClusterForming("fail", int(covered[1]) if covered else None) from exc
        if str(exc).startswith(_CLUSTER_UNREACHABLE):
            metrics.engine_error("unreachable")
            raise StorageUnavailable("storage unreachable: no cluster node answers") from exc
        raise


def _refused(exc: rx.RedisError) -> EngineRefused:
    metrics.engine_error("refused")
    code = str(exc).split(" ", 1)[0]
    if code not in _REFUSED:  # redis-py replaced the code by its own words
        if isinstance(exc, rx.NoPermissionError):
            code = "NOPERM"
        elif "authenticated" in str(exc) or "required" in str(exc):
            # NOAUTH: "HELLO must be called with the client already authenticated ...",
            # or "Authentication required." to a first command
            code = "NOAUTH"
        else:  # "invalid username-password pair ..." (WRONGPASS)
            code = "WRONGPASS"
    return EngineRefused(code, _REFUSED[code])


def connect(settings: Settings) -> Client:
    """An asyncio client for the engine the settings name (``Settings.engine_kind``).

    The embedded engine has no URL until it runs: ``serve`` and ``engine_settings`` start
    or find it and put its URL in ``redis_url``.
    """
    if settings.redis_cluster_url:
        return connect_cluster(settings, settings.redis_cluster_url)
    if not settings.redis_url:
        raise ValueError("no Redis URL: start the embedded server or set REDIS_URL")
    # One quick retry covers a pooled connection that went stale across an engine restart;
    # short timeouts make an outage answer 503 within about a second instead of hanging.
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        max_connections=settings.redis_max_connections,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return client


def connect_reads(settings: Settings) -> tuple[Client | None, bool]:
    """The client of analytics reads when they have their own, and whether its scripts go
    as EVALSHA_RO: REDIS_READ_URL (one node, e.g. a replica), or the cluster's replicas
    with EA_READ_FROM_REPLICAS; (None, False) reads where ingest writes."""
    if settings.redis_cluster_url and settings.read_from_replicas:
        return connect_cluster(settings, settings.redis_cluster_url, replicas=True), True
    if settings.redis_read_url:
        read = settings.model_copy(
            update={"redis_url": settings.redis_read_url, "redis_cluster_url": None}
        )
        return connect(read), False
    return None, False


class _HiredisPacking:
    """Encode commands with hiredis (C) instead of redis-py's per-argument Python loop.

    An ingest call carried 23 arguments per event before names went once per call (5 now):
    profiled then, redis-py's pack_command was ~30% of a rebuild's CPU and ~15% of the live
    hot path; hiredis.pack_command is ~8x faster on such calls. redis-py itself uses it
    only for its synchronous client.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        # redis-py passes multi-word commands ("SCRIPT LOAD") as one argument.
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


_PACKING: dict[type[Any], type[Any]] = {}


def _hiredis_packing(base: type[Any]) -> type[Any]:
    """``base`` with hiredis packing (one class per base, so pools stay comparable)."""
    if base not in _PACKING:
        _PACKING[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return _PACKING[base]


class Store:
    """Ingest and read operations over one Redis connection pool."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        aggregate_above: int = AGGREGATE_ABOVE,
        caps: Caps = Caps(),  # noqa: B008 (frozen)
    ) -> None:
        self.client = client
        self.keys = keys
        self.aggregate_above = aggregate_above
        self.caps = caps
        self._ingest_script = register(client, Lua.INGEST)
        self._claim_script = register(client, Lua.CLAIM)
        self._unclaim_script = register(client, Lua.UNCLAIM)

    @classmethod
    def from_settings(cls, settings: Settings, aggregate_above: int = AGGREGATE_ABOVE) -> Store:
        """The one factory: the client of the engine the settings choose, and its Keys.

        ``aggregate_above``: for measurements and tests of the script's two paths.
        """
        caps = Caps(settings.max_event_types, settings.max_pages_per_bucket)
        return cls(connect(settings), Keys.from_settings(settings), aggregate_above, caps)

    async def close(self) -> None:
        await self.client.aclose()

    async def ingest(
        self, events: Sequence[PreparedEvent], *, stream: bool = True
    ) -> list[Outcome]:
        """Apply events atomically per shard; each event's Outcome (NEW is truthy, the
        others are not).

        Each shard's events go in ONE script call, and all calls in one round trip.
        ``stream=False`` replays archived events: counted, but not streamed again.
        """
        if stream and self.keys.shards > 1:
            outcomes = await self.ingest_each(events)  # ids may live on other shards
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome
            return [o for o in outcomes if not isinstance(o, Exception)]
        by_shard, calls = self._calls(events, stream)
        async with engine_errors(write=True):
            replies = await call_per_shard(self.client, self._ingest_script, calls)
        results: list[Outcome] = [Outcome.DUPLICATE] * len(events)
        for indexes, reply in zip(by_shard.values(), replies, strict=True):
            for i, flag in zip(indexes, reply, strict=True):
                results[i] = Outcome(flag)
        return results

    async def ingest_each(
        self, events: Sequence[PreparedEvent], *, stream: bool = True
    ) -> list[Outcome | Exception]:
        """Like ingest(), but a shard that fails fails only its own events.

        The group-commit batcher mixes many requests' events: on a cluster, a master in
        failover must not refuse the requests whose shards live on healthy masters. So
        each shard's call runs on its own (concurrently); an event of a failed shard
        gets that shard's StorageUnavailable in place of its flag.

        An event whose id lives on another shard than its user is claimed there first
        (store/claims.py): dedup by id whatever user a resend carries.
        """
        if not stream or self.keys.shards == 1:
            return await self._each(events, stream)
        cross = [i for i, e in enumerate(events) if self.keys.id_shard(e.event_id) != e.shard]
        if not cross:
            return await self._each(events, stream)
        crossing = set(cross)
        local = [i for i in range(len(events)) if i not in crossing]
        results: list[Outcome | Exception] = [Outcome.DUPLICATE] * len(events)
        local_flags, claimed = await asyncio.gather(
            self._each([events[i] for i in local], True),
            self._claim([events[i] for i in cross]),
        )
        for i, flag in zip(local, local_flags, strict=True):
            results[i] = flag
        # Step 2: apply what was claimed now, and what an earlier claim left unconfirmed.
        apply: list[tuple[int, PreparedEvent]] = []
        for i, reply in zip(cross, claimed, strict=True):
            if isinstance(reply, Exception):
                results[i] = reply
            elif isinstance(reply, bytes):
                apply.append((i, claims.decode(events[i].event_id, reply)[1]))
            else:
                results[i] = Outcome.NEW if reply == 1 else Outcome.DUPLICATE
                if reply == 1:
                    apply.append((i, events[i]))
        applied = await self._each([e for _, e in apply], True)
        done: list[bytes] = []
        refused: list[PreparedEvent] = []
        for (i, event), outcome in zip(apply, applied, strict=True):
            if isinstance(outcome, Exception):
                # Claimed, so stored (in the outbox): counted once its shard answers.
                results[i] = StorageOutcomeUnknown(
                    f"event stored, its user's shard did not answer yet ({outcome})"
                )
            elif outcome is Outcome.TOO_MANY_EVENT_TYPES:
                # Its user's shard takes no new type: the claim is undone, so the id is
                # not remembered for an event that was never counted.
                results[i] = outcome
                refused.append(event)
            else:
                done.append(event.event_id)
        await self._commit(done)
        await self._unclaim(refused)
        return results

    async def _each(
        self, events: Sequence[PreparedEvent], stream: bool
    ) -> list[Outcome | Exception]:
        """One ingest call per user shard, concurrently; a failed shard fails its events."""
        if not events:
            return []
        by_shard, calls = self._calls(events, stream)

        async def one(call: Call) -> list[Any]:
            async with engine_errors(write=True):
                replies = await call_per_shard(self.client, self._ingest_script, [call])
            return list(replies[0])

        outcomes = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
        results: list[Outcome | Exception] = [Outcome.DUPLICATE] * len(events)
        for indexes, outcome in zip(by_shard.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                for i in indexes:
                    results[i] = outcome
            else:
                for i, flag in zip(indexes, outcome, strict=True):
                    results[i] = Outcome(flag)
        return results

    async def _claim(self, events: Sequence[PreparedEvent]) -> list[int | bytes | Exception]:
        """Step 1 for events whose id lives on another shard: claim.lua's reply per event."""
        window = events[0].bucket.dedup_window_s
        gen_s = -(-window // DEDUP_GENERATIONS)
        calls = claims.claim_calls(self.keys, events, gen_s, DEDUP_GENERATIONS, time.time())

        async def one(call: Call) -> list[Any]:
            async with engine_errors(write=True):
                replies = await call_per_shard(self.client, self._claim_script, [call])
            return list(replies[0])

        outcomes = await asyncio.gather(*(one(c) for _, c in calls), return_exceptions=True)
        results: list[int | bytes | Exception] = [0] * len(events)
        for (indexes, _), outcome in zip(calls, outcomes, strict=True):
            for n, i in enumerate(indexes):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome
                    results[i] = outcome
                else:
                    results[i] = outcome[n]
        return results

    async def _commit(self, event_ids: Sequence[bytes]) -> None:
        """Step 3: forget the outbox entries of applied events. Best effort: an entry left
        behind is applied again (idempotently) by a resend or the sweeper."""
        if not event_ids:
            return
        by_shard: dict[int, list[bytes]] = defaultdict(list)
        for event_id in event_ids:
            by_shard[self.keys.id_shard(event_id)].append(event_id)
        with contextlib.suppress(StorageUnavailable):
            async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
                for shard, ids in by_shard.items():
                    for start in range(0, len(ids), claims.CHUNK):
                        chunk = ids[start : start + claims.CHUNK]
                        pipe.execute_command("HDEL", self.keys.outbox(shard), *chunk)
                await pipe.execute()

    async def _unclaim(self, events: Sequence[PreparedEvent]) -> None:
        """Forget the claims of events their user's shard refused (unclaim.lua). Best
        effort like _commit: an entry left behind is refused again by the sweeper."""
        if not events:
            return
        by_shard: dict[int, list[bytes]] = defaultdict(list)
        for event in events:
            by_shard[self.keys.id_shard(event.event_id)].append(event.event_id)
        gen_s = -(-events[0].bucket.dedup_window_s // DEDUP_GENERATIONS)
        calls: list[Call] = []
        for shard, ids in by_shard.items():
            for start in range(0, len(ids), claims.CHUNK):
                calls.append(
                    (
                        [self.keys.seen_stem(shard), self.keys.outbox(shard)],
                        [gen_s, DEDUP_GENERATIONS, *ids[start : start + claims.CHUNK]],
                    )
                )
        with contextlib.suppress(StorageUnavailable):
            async with engine_errors(write=True):
                await call_per_shard(self.client, self._unclaim_script, calls)

    async def sweep_outbox(self, older_than_s: float = claims.SWEEP_AFTER_S) -> int:
        """Apply the outbox entries claimed more than ``older_than_s`` ago (a request that
        died between the steps), at most 1,000 per shard; the number applied."""
        cutoff = time.time() - older_than_s
        due: list[PreparedEvent] = []
        for shard in range(self.keys.shards):
            async with engine_errors():
                reply: Any = await self.client.hscan(self.keys.outbox(shard), 0, count=1000)
            rows: dict[bytes, bytes] = reply[1]
            for event_id, blob in rows.items():
                at, event = claims.decode(event_id, blob)
                if at <= cutoff:
                    due.append(event)
        applied = await self._each(due, True)
        done: list[bytes] = []
        refused: list[PreparedEvent] = []
        for event, outcome in zip(due, applied, strict=True):
            if outcome is Outcome.TOO_MANY_EVENT_TYPES:
                refused.append(event)
            elif not isinstance(outcome, Exception):
                done.append(event.event_id)
        await self._commit(done)
        await self._unclaim(refused)
        return len(done)

    def _calls(
        self, events: Sequence[PreparedEvent], stream: bool
    ) -> tuple[dict[int, list[int]], list[Call]]:
        """Group events by shard: one script call (keys, args) per shard.

        Per call each distinct bucket's names and each distinct page once, per event five
        values (store/ingest.lua documents the layout). ``stream=False`` (replay) counts
        without dedup and without streaming.
        """
        by_shard: dict[int, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            by_shard[event.shard].append(index)
        calls: list[Call] = []
        for shard, indexes in by_shard.items():
            buckets: dict[Bucket, int] = {}
            pages: dict[str, int] = {}
            keys = [
                self.keys.stream(shard),
                # Live: dedup by id. Replay: a marker of the call, applied once.
                self.keys.seen_stem(shard) if stream else self.keys.replayed_stem(shard),
                self.keys.stream_extra(shard),
                self.keys.event_types(shard),
            ]
            bucket_args: list[str | int] = []
            page_args: list[str] = []
            event_args: list[str | bytes | int] = []
            for i in indexes:
                event = events[i]
                b = buckets.get(event.bucket)
                if b is None:
                    b = buckets[event.bucket] = len(buckets) + 1
                    keys.extend(event.bucket.stems)
                    bucket_args.append(event.bucket.event_type)
                    bucket_args.extend(event.bucket.expire_at)
                p = 0
                if event.page_url:
                    p = pages.get(event.page_url, 0)
                    if not p:
                        p = pages[event.page_url] = len(pages) + 1
                        page_args += (event.page_url, page_digest(event.page_url))
                event_args += (event.event_id, event.user_id, p, b, event.record)
            rules = events[indexes[0]].bucket
            head = (
                len(indexes),
                len(buckets),
                len(pages),
                1 if stream else 0,
                1 if rules.exact else 0,
                1 if len(indexes) > self.aggregate_above else 0,
                # The window in DEDUP_GENERATIONS generations, plus the one being filled.
                -(-rules.dedup_window_s // DEDUP_GENERATIONS),
                DEDUP_GENERATIONS,
                # Lets the script recognise its own earlier write if this very call is sent
                # again (a client-side retry after a lost reply): never a false duplicate.
                secrets.token_bytes(8),
                self.caps.event_types,
                self.caps.pages_per_bucket,
                OTHER_PAGE,
                page_digest(OTHER_PAGE),
            )
            calls.append((keys, [*head, *bucket_args, *page_args, *event_args]))
        return by_shard, calls

    async def stream_length(self) -> int:
        """Events in all shards' streams (not yet trimmed by the archiver)."""
        async with engine_errors(), self.client.pipeline(transaction=False) as pipe:
            for shard in range(self.keys.shards):
                pipe.xlen(self.keys.stream(shard))
                pipe.get(self.keys.stream_extra(shard))  # an entry holds a call's records
            return sum(int(n or 0) for n in await pipe.execute())

    async def engine_info(self) -> dict[str, Any]:
        """Reachability and durability facts for /health/ready."""
        if isinstance(self.client, RedisCluster):
            async with engine_errors():
                return await cluster_info(self.client)
        async with engine_errors():
            await self.client.ping()
            info = await self.client.info("server")
            persistence = await self.client.info("persistence")
            try:
                fsync = (await self.client.config_get("appendfsync")).get("appendfsync")
            except rx.ResponseError:  # CONFIG is often disabled on managed services
                fsync = None
        name = "valkey" if "valkey_version" in info else "redis"
        version = info.get("valkey_version") or info.get("redis_version")
        aof = bool(int(persistence.get("aof_enabled", 0)))
        return {
            "engine": name,
            "version": str(version),
            "aof_enabled": aof,
            "appendfsync": _as_str(fsync) if fsync is not None else "unknown",
        }


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
