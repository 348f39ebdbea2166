"""What may stop the engine from keeping what it acknowledges, read at start and then
every second: its eviction policy (an evicting engine silently forgets counters and dedup
ids), how full its memory is, the free space of the embedded engine's filesystem, and
the archive backlog (events in the streams).

Polling covers a reconnect too: an engine restarted with another configuration, or
changed by CONFIG SET, is seen within one interval. Ingest consults the last reading
(no engine call on the hot path); readiness reads afresh. So each bound is exact to
within what one interval of ingest adds (per worker, all reading the same engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster

from event_analytics.config import Settings
from event_analytics.errors import (
    ArchiveBacklogFull,
    EngineFull,
    EngineMayEvict,
    StorageFull,
    StorageUnavailable,
)
from event_analytics.store.cluster import known_slots
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.writer import IngestWriter

log = logging.getLogger(__name__)
NO_EVICTION = "noeviction"


@dataclass(frozen=True, slots=True)
class NodeMemory:
    """One master's memory: ``node`` is its address as the service reaches it."""

    node: str
    used_bytes: int
    limit_bytes: int  # 0: no maxmemory


@dataclass(frozen=True, slots=True)
class EngineMemory:
    """Memory of the engine (summed over a cluster's masters), and of each master: one
    full master among healthy ones refuses the writes of its slots."""

    used_bytes: int
    # 0 = no maxmemory on some master (then the machine is the limit).
    limit_bytes: int
    # Each master's maxmemory-policy, distinct values.
    policies: tuple[str, ...]
    # Some master at or over its maxmemory: with noeviction it refuses writes (OOM).
    full: bool
    nodes: tuple[NodeMemory, ...] = ()

    @property
    def evicting_policy(self) -> str | None:
        """The first policy that may evict keys; volatile-* ones too: every counter has a TTL."""
        return next((p for p in self.policies if p != NO_EVICTION), None)


def _int(info: dict[str, Any], name: str) -> int:
    return int(info.get(name, 0) or 0)


async def read_memory(client: Client) -> EngineMemory:
    """INFO memory of the node, or of every master (INFO works where CONFIG is disabled)."""
    async with engine_errors():
        if isinstance(client, RedisCluster):
            await known_slots(client)
            primaries = client.get_primaries()
            names = [str(node.name) for node in primaries]
            infos = [
                await client.execute_command("INFO", "memory", target_nodes=node)
                for node in primaries
            ]
        else:
            kwargs = client.connection_pool.connection_kwargs
            names = [str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")]
            infos = [await client.info("memory")]
    used = [_int(i, "used_memory") for i in infos]
    limits = [_int(i, "maxmemory") for i in infos]
    policies = {str(i.get("maxmemory_policy", NO_EVICTION)) for i in infos}
    return EngineMemory(
        used_bytes=sum(used),
        limit_bytes=0 if 0 in limits else sum(limits),
        policies=tuple(sorted(policies)),
        full=any(limit and u >= limit for u, limit in zip(used, limits, strict=True)),
        nodes=tuple(
            NodeMemory(name, u, limit) for name, u, limit in zip(names, used, limits, strict=True)
        ),
    )


def free_bytes(path: Path) -> int | None:
    """Free space for an unprivileged writer on ``path``'s filesystem (None: no such dir)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class EngineWatch:
    """The last readings, refreshed in the background by ``run``."""

    def __init__(self, store: IngestWriter, settings: Settings, interval_s: float = 1.0) -> None:
        self.store = store
        self.client: Client = store.client
        self.allow_evicting = settings.allow_evicting_engine
        self.max_backlog = settings.max_archive_backlog
        self.min_free = settings.min_free_disk_bytes
        # Only the embedded engine's files are ours to watch; an external engine's disk
        # shows as its own errors (MISCONF: a 503).
        self.engine_path = settings.engine_path if settings.embedded_engine else None
        self.archive_path = settings.archive_path
        self.interval_s = interval_s
        self.memory: EngineMemory | None = None
        self.backlog: int | None = None
        self.engine_free: int | None = None
        self.stopping = False

    async def refresh(self) -> EngineMemory | None:
        """Read now; on an outage keep the last reading (the outage answers for itself)."""
        if self.engine_path is not None:
            self.engine_free = free_bytes(self.engine_path)
        with contextlib.suppress(StorageUnavailable):
            memory = await read_memory(self.client)
            if memory.evicting_policy and (self.memory is None or not self.memory.evicting_policy):
                log.warning(
                    "engine maxmemory-policy %s may evict keys%s", memory.evicting_policy,
                    "" if self.allow_evicting else ": ingest refused (EA_ALLOW_EVICTING_ENGINE)",
                )  # fmt: skip
            self.memory = memory
            if self.max_backlog:
                self.backlog = await self.store.stream_length()
        return self.memory

    async def run(self) -> None:
        """Refresh every interval until ``stop`` (or a cancel)."""
        while not self.stopping:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def stop(self) -> None:
        """End ``run`` after its current reading. A cancel alone may not: redis-py sends
        each command under ``asyncio.wait_for``, which before Python 3.12 drops a cancel
        that arrives as the command completes (CPython issue 86296), and the loop would
        go on reading (tests/test_engine_watch.py: 8 stops in 30)."""
        self.stopping = True

    def may_evict(self, memory: EngineMemory | None = None) -> str | None:
        """The evicting policy that makes writes unsafe, unless the operator allowed it."""
        memory = memory or self.memory
        if memory is None or self.allow_evicting:
            return None
        return memory.evicting_policy

    def refusal(self) -> StorageUnavailable | None:
        """Why ingest must not write now (from the last readings), or None."""
        policy = self.may_evict()
        if policy is not None:
            return EngineMayEvict(policy)
        if self.engine_free is not None and self.engine_free < self.min_free:
            return StorageFull(
                f"the engine's filesystem has {self.engine_free} bytes free, below "
                f"EA_MIN_FREE_DISK_BYTES={self.min_free}"
            )
        if self.max_backlog and self.backlog is not None and self.backlog >= self.max_backlog:
            return ArchiveBacklogFull(self.backlog, self.max_backlog)
        return None

    def not_ready(self) -> StorageUnavailable | None:
        """Why readiness is red though the engine answers: a refusal, or a full engine."""
        refusal = self.refusal()
        if refusal is None and self.memory is not None and self.memory.full:
            return EngineFull("storage full")
        return refusal

    def check_writes(self) -> None:
        """Raise the refusal, if any."""
        refusal = self.refusal()
        if refusal is not None:
            raise refusal

    def facts(self) -> dict[str, Any]:
        """What readiness shows of these readings."""
        out: dict[str, Any] = {}
        if self.memory is not None:
            memory = self.memory
            out["memory"] = {
                "used_bytes": memory.used_bytes,
                "limit_bytes": memory.limit_bytes or None,
                "maxmemory_policy": ",".join(memory.policies),
            }
            if memory.evicting_policy and self.allow_evicting:
                out["memory"]["warning"] = (
                    f"maxmemory-policy {memory.evicting_policy} may evict counters and dedup "
                    "ids; accepted by EA_ALLOW_EVICTING_ENGINE"
                )
        disk: dict[str, Any] = {"min_free_bytes": self.min_free}
        if self.engine_path is not None:
            disk["engine_free_bytes"] = self.engine_free
        # The archive may fill up without refusing ingest: the streams buffer (bounded).
        disk["archive_free_bytes"] = free_bytes(self.archive_path)
        out["disk"] = disk
        if self.max_backlog:
            out["archive_backlog"] = {"events": self.backlog, "bound": self.max_backlog}
        return out
