"""The engines the suite runs on, behind one interface: a single node or the 3+3 cluster.

Tests that look at storage directly (keys, TTLs, FLUSHALL, SCRIPT FLUSH, killing the
engine) go through a Backend, so the same test body runs on both.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from benchmarks.procs import EngineProcess
from event_analytics.config import Settings
from event_analytics.keys import Keys
from tests.cluster import ClusterProcess

# A sync client for either engine: the commands the tests use exist on both.
Client = redis.Redis | RedisCluster


class Backend:
    """One engine: ``kind`` is "valkey" or "redis" (one node) or "cluster" (3+3 Valkey)."""

    def __init__(
        self, kind: str, engine: EngineProcess | ClusterProcess, prefix: str = "ea:"
    ) -> None:
        self.kind = kind
        self.engine = engine
        # A key prefix of its own keeps a test's services apart from the session's
        # services (and their archivers) on a shared engine.
        self.prefix = prefix

    @property
    def is_cluster(self) -> bool:
        return isinstance(self.engine, ClusterProcess)

    @property
    def url(self) -> str:
        """REDIS_URL, or REDIS_CLUSTER_URL for the cluster."""
        return self.engine.url

    @property
    def env(self) -> dict[str, str]:
        """What a service or CLI needs in its environment to use this engine."""
        env = {"REDIS_CLUSTER_URL" if self.is_cluster else "REDIS_URL": self.url}
        if self.prefix != "ea:":
            env["EA_KEY_PREFIX"] = self.prefix
        return env

    @property
    def shards(self) -> int:
        """The service's default shard count on this engine."""
        return self.settings().shards

    def settings(self, **kw: Any) -> Settings:
        """Settings for this engine (``kw`` as Settings takes them)."""
        if self.is_cluster:
            return Settings(redis_cluster_url=self.url, redis_url=None, **kw)
        return Settings(redis_url=self.url, **kw)

    def keys(self, shards: int | None = None) -> Keys:
        """Key names as this engine's services build them (default shards, or ``shards``)."""
        return Keys(self.prefix, shards or self.shards)

    def client(self, decode_responses: bool = False) -> Client:
        """A sync client; on the cluster it routes each key to its master."""
        if isinstance(self.engine, ClusterProcess):
            nodes = [ClusterNode("127.0.0.1", n.port) for n in self.engine.alive()]
            return RedisCluster(
                startup_nodes=nodes, decode_responses=decode_responses, socket_timeout=5
            )
        return redis.Redis.from_url(self.url, decode_responses=decode_responses)

    def scan(self, pattern: str) -> list[str]:
        """Names of every key matching ``pattern``, on every master (KEYS asks one node)."""
        with contextlib.closing(self.client(decode_responses=True)) as c:
            return sorted(set(c.scan_iter(match=pattern, count=1000)))

    def flush(self) -> None:
        """FLUSHALL (on every master of the cluster; its replicas follow)."""
        if isinstance(self.engine, ClusterProcess):
            self.engine.flush()
            return
        with contextlib.closing(redis.Redis.from_url(self.url)) as c:
            c.flushall()

    def script_flush(self) -> None:
        """SCRIPT FLUSH on every node that may serve a call (masters and replicas)."""
        for node in self.nodes():
            with contextlib.closing(redis.Redis(port=node.port, socket_timeout=5)) as c:
                c.script_flush()

    def kill(self) -> None:
        """SIGKILL the engine: the one node, or every node of the cluster (a full outage)."""
        for node in self.nodes():
            node.kill()

    def start(self) -> None:
        """Start what kill() stopped, with its data (AOF); on the cluster, until it is ok."""
        for node in self.nodes():
            if node.proc is None or node.proc.poll() is not None:
                node.start()
        if isinstance(self.engine, ClusterProcess):
            self.engine.wait_ok()

    def pids(self) -> list[int]:
        """Processes serving data: the node, or the cluster's masters.

        Stopping every master hangs the cluster without a failover: replicas are only
        promoted by the masters' votes.
        """
        engine = self.engine
        nodes = engine.masters() if isinstance(engine, ClusterProcess) else [engine]
        return [n.proc.pid for n in nodes if n.proc is not None and n.proc.poll() is None]

    def nodes(self) -> list[EngineProcess]:
        """Every engine process: the one node, or all six of the cluster."""
        if isinstance(self.engine, ClusterProcess):
            return self.engine.nodes
        return [self.engine]


def own_engine_env(request: pytest.FixtureRequest, prefix: str) -> dict[str, str]:
    """Engine variables of a service a fixture starts itself, by its param: none for
    "embedded" (the bundled Valkey, as `make run`), or the session's cluster, emptied under
    a key prefix of the service's own (the session's services share the cluster)."""
    if request.param == "embedded":
        return {}
    backend = Backend("cluster", request.getfixturevalue("cluster"), prefix=prefix)
    backend.flush()
    return backend.env
