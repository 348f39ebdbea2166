"""The engine's memory facts, read at start and then every second: its eviction policy
(an evicting engine silently forgets counters and dedup ids) and how full it is.

Polling covers a reconnect too: an engine restarted with another configuration, or
changed by CONFIG SET, is seen within one interval. Ingest consults the last reading
(no engine call on the hot path); readiness reads afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from event_analytics.model import EngineMayEvict, StorageUnavailable
from event_analytics.store.redis import Client, engine_errors

log = logging.getLogger(__name__)
NO_EVICTION = "noeviction"


@dataclass(frozen=True, slots=True)
class EngineMemory:
    """Memory of the engine (summed over a cluster's masters)."""

    used_bytes: int
    # 0 = no maxmemory on some master (then the machine is the limit).
    limit_bytes: int
    # Each master's maxmemory-policy, distinct values.
    policies: tuple[str, ...]
    # Some master at or over its maxmemory: with noeviction it refuses writes (OOM).
    full: bool

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
            await client.initialize()
            infos = [
                await client.execute_command("INFO", "memory", target_nodes=node)
                for node in client.get_primaries()
            ]
        else:
            infos = [await client.info("memory")]
    used = [_int(i, "used_memory") for i in infos]
    limits = [_int(i, "maxmemory") for i in infos]
    policies = {str(i.get("maxmemory_policy", NO_EVICTION)) for i in infos}
    return EngineMemory(
        used_bytes=sum(used),
        limit_bytes=0 if 0 in limits else sum(limits),
        policies=tuple(sorted(policies)),
        full=any(limit and u >= limit for u, limit in zip(used, limits, strict=True)),
    )


class EngineWatch:
    """The last memory reading, refreshed in the background by ``run``."""

    def __init__(self, client: Client, allow_evicting: bool, interval_s: float = 1.0) -> None:
        self.client = client
        self.allow_evicting = allow_evicting
        self.interval_s = interval_s
        self.memory: EngineMemory | None = None

    async def refresh(self) -> EngineMemory | None:
        """Read now; on an outage keep the last reading (the outage answers for itself)."""
        with contextlib.suppress(StorageUnavailable):
            memory = await read_memory(self.client)
            if memory.evicting_policy and (self.memory is None or not self.memory.evicting_policy):
                log.warning(
                    "engine maxmemory-policy %s may evict keys%s", memory.evicting_policy,
                    "" if self.allow_evicting else ": ingest refused (EA_ALLOW_EVICTING_ENGINE)",
                )  # fmt: skip
            self.memory = memory
        return self.memory

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    def may_evict(self, memory: EngineMemory | None = None) -> str | None:
        """The evicting policy that makes writes unsafe, unless the operator allowed it."""
        memory = memory or self.memory
        if memory is None or self.allow_evicting:
            return None
        return memory.evicting_policy

    def check_writes(self) -> None:
        """Raise EngineMayEvict when the last reading says the engine may evict."""
        policy = self.may_evict()
        if policy is not None:
            raise EngineMayEvict(policy)
