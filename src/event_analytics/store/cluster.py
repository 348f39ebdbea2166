"""Redis Cluster: the client built from REDIS_CLUSTER_URL, and what readiness reports.

Every key of a shard carries the hash tag ``{s}``, so each script call and each
transaction touches one slot; the cluster client routes it by its first key and
follows MOVED/ASK itself. What it cannot hide (a master that died and whose replica is
not promoted yet) must surface quickly as StorageUnavailable (HTTP 503), not hang:
hence short timeouts and few retries.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import LoadBalancingStrategy

from event_analytics.config import Settings
from event_analytics.errors import ClusterForming

SLOTS = 16384

# Attempts after the first on a connection error, CLUSTERDOWN or an unmapped slot; each
# one re-reads the slot map, so a request that arrives just after a promotion succeeds.
# More would only stretch the 503 of a request that arrives before it.
CLUSTER_RETRIES = 2


def parse_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """Split ``redis://[user:pw@]h1:p1,h2:p2`` into the first node's URL and all seeds."""
    parts = [part.strip() for part in url.split(",") if part.strip()]
    if not parts:
        raise ValueError("REDIS_CLUSTER_URL names no node")
    first = urlsplit(parts[0])
    if first.scheme not in ("redis", "rediss") or not first.hostname:
        raise ValueError("REDIS_CLUSTER_URL must start with redis:// or rediss:// and a host")
    seeds: list[tuple[str, int]] = []
    for part in parts:
        node = urlsplit(part if "://" in part else f"{first.scheme}://{part}")
        if not node.hostname:
            raise ValueError(f"REDIS_CLUSTER_URL: no host in {part!r}")
        seeds.append((node.hostname, node.port or 6379))
    return parts[0], seeds


_SCRIPT_CALLS = frozenset(("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"))


class HashTagged(RedisCluster):
    """A cluster client that routes a script call by its first key alone.

    redis-py hashes every key of an EVAL/EVALSHA (CRC16 in Python) to check that they
    share a slot before sending it. Ours always do (one hash tag per shard), and a call
    of thousands of keys (verify and the day reads name 2 keys per minute: 2,880 a day
    per shard) spent more CPU hashing them than the engine spent answering. The engine
    still refuses keys of several slots (CROSSSLOT), so no check is lost; what changes is
    only that the client no longer repeats it.

    redis-py would also ask a node for the keys of EVAL_RO/EVALSHA_RO (COMMAND GETKEYS:
    a round trip per call, to a node picked once); their arguments have EVALSHA's
    layout, so they are routed the same way.
    """

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in _SCRIPT_CALLS:
            if len(args) >= 3 and int(args[1]) > 0:
                return self.keyslot(args[2])
            command = "EVALSHA"  # no key: any node (redis-py's rule for EVALSHA)
        return await super()._determine_slot(command, *args)


class ReplicaReads(HashTagged):
    """A cluster client whose read commands go to replicas, read-only scripts included
    (routed by ``HashTagged``, sent to a replica of that slot by redis-py)."""


def connect_cluster(settings: Settings, url: str, *, replicas: bool = False) -> RedisCluster:
    """A cluster client that knows every seed node (any one reachable is enough).

    ``replicas``: read commands go to the slots' replicas, round robin (ReplicaReads)."""
    first, seeds = parse_seeds(url)
    kind = ReplicaReads if replicas else HashTagged
    balance = {"load_balancing_strategy": LoadBalancingStrategy.ROUND_ROBIN_REPLICAS}
    return kind.from_url(
        first,
        startup_nodes=[ClusterNode(host, port) for host, port in seeds[1:]],
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        max_connections=settings.redis_max_connections,  # per node
        retry=Retry(NoBackoff(), CLUSTER_RETRIES),
        # Serve the slots that have a master even while others have none; those answer 503.
        require_full_coverage=False,
        reinitialize_steps=0,
        health_check_interval=30,
        **(balance if replicas else {}),
    )


async def by_key(client: Any, key: str) -> dict[str, Any]:
    """``execute_command`` options sending a command to the node serving ``key``.

    For commands whose keys redis-py cannot find itself (XREADGROUP has "movablekeys"):
    it asks ``COMMAND GETKEYS`` of one node it picked at start, and when that node dies
    it never picks another (its connection error does not trigger a slot-map refresh),
    so such commands would fail forever after a failover. Routing them ourselves avoids
    that; a dead node here does refresh the map for the next call.
    """
    if not isinstance(client, RedisCluster):
        return {}
    await client.initialize()  # a no-op unless the map is missing or marked stale
    return {"target_nodes": client.get_node_from_key(key)}


async def known_slots(client: RedisCluster) -> None:
    """Initialise the client, and re-read its slot map while it lacks slots: started on a
    cluster still forming, it would otherwise keep failing the slots assigned since (its
    pipelines never re-read the map on their own). Readiness and the engine watch (every
    second) call it."""
    await client.initialize()  # the node list is empty until the first command
    if len(client.nodes_manager.slots_cache) < SLOTS:
        await client.nodes_manager.initialize()


async def cluster_info(client: RedisCluster) -> dict[str, Any]:
    """Readiness facts: every master answers, and how each one persists and replicates."""
    await known_slots(client)
    masters = client.get_primaries()
    if not masters:
        raise rx.ConnectionError("no master known")
    state = _text_info(await client.execute_command("CLUSTER INFO", target_nodes=masters[0]))
    slots_ok = int(state.get("cluster_slots_ok", 0))
    if state.get("cluster_state") != "ok" or slots_ok < SLOTS:
        # The client starts on a partly covered cluster (require_full_coverage=False):
        # a forming one answers, but writes to its unassigned slots fail.
        raise ClusterForming(state.get("cluster_state", "unknown"), slots_ok)
    engines: list[tuple[str, str]] = []
    aof: list[bool] = []
    fsync: set[str] = set()
    replicas = 0
    for node in masters:
        info = await client.execute_command("INFO", "server", target_nodes=node)
        persistence = await client.execute_command("INFO", "persistence", target_nodes=node)
        replication = await client.execute_command("INFO", "replication", target_nodes=node)
        name = "valkey" if "valkey_version" in info else "redis"
        engines.append((name, str(info.get("valkey_version") or info.get("redis_version"))))
        aof.append(bool(int(persistence.get("aof_enabled", 0))))
        replicas += int(replication.get("connected_slaves", 0))
        try:
            reply = await client.execute_command("CONFIG GET", "appendfsync", target_nodes=node)
            fsync.add(_as_str(reply.get("appendfsync", "unknown")))
        except rx.ResponseError:  # CONFIG is often disabled on managed services
            fsync.add("unknown")
    name, version = engines[0]
    return {
        "engine": name,
        "version": version,
        "aof_enabled": all(aof),
        "appendfsync": fsync.pop() if len(fsync) == 1 else "mixed",
        "cluster": {
            "state": state.get("cluster_state", "unknown"),
            "masters": len(masters),
            "replicas": replicas,
            "slots_ok": slots_ok,
            # Replicas receive writes after the ack: a failover can lose the last ones.
            "replication": "async",
        },
    }


def _text_info(reply: Any) -> dict[str, str]:
    """``CLUSTER INFO`` comes back as text (``key:value`` lines) or already parsed."""
    if isinstance(reply, dict):
        return {str(k): _as_str(v) for k, v in reply.items()}
    lines = _as_str(reply).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
