"""A real Valkey Cluster for tests: 3 masters + 3 replicas on free loopback ports."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

from benchmarks.procs import EngineProcess, free_ports
from tests.servers import engine_binary

# Low, so that a killed master is replaced within a few seconds (default: 15 s).
NODE_TIMEOUT_MS = 1000


def _info(reply: object) -> dict[str, str]:
    """CLUSTER INFO as a dict (redis-py parses it; raw text otherwise)."""
    if isinstance(reply, dict):
        return {str(k): str(v.decode() if isinstance(v, bytes) else v) for k, v in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class ClusterProcess:
    """Six ``valkey-server --cluster-enabled yes`` joined by ``valkey-cli --cluster create``."""

    def __init__(self, binary: str, directory: Path, masters: int = 3) -> None:
        self.cli = str(Path(binary).with_name(Path(binary).name.replace("-server", "-cli")))
        ports = free_ports(4 * masters)  # a client port and a bus port per node
        self.nodes = [
            EngineProcess(
                binary, directory / f"node-{i}", ports[2 * i], self._args(ports[2 * i + 1])
            )
            for i in range(2 * masters)
        ]

    @staticmethod
    def _args(bus_port: int) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            # Explicit bus port: the default (port + 10000) overflows for high free ports.
            "--cluster-port", str(bus_port),
            "--cluster-config-file", "nodes.conf",  # in --dir: one per node
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # The other masters keep serving their slots while one has none (as deployed).
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """REDIS_CLUSTER_URL: every node as a seed (the service needs any one of them)."""
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        create = [
            self.cli, "--cluster", "create",
            *(f"127.0.0.1:{n.port}" for n in self.nodes),
            "--cluster-replicas", "1", "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, done.stdout + done.stderr
        self.wait_ok(timeout_s)

    def client(self, node: EngineProcess) -> redis.Redis:
        return redis.Redis(port=node.port, socket_connect_timeout=0.5, socket_timeout=2)

    def alive(self) -> list[EngineProcess]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every live node sees the cluster ok, all slots served and replicas synced."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            try:
                if all(self._node_ok(n) for n in self.alive()):
                    return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                last = repr(exc)
            assert time.monotonic() < deadline, f"cluster not ok: {last or self.describe()}"
            time.sleep(0.1)

    def _node_ok(self, node: EngineProcess) -> bool:
        with contextlib.closing(self.client(node)) as c:
            state = _info(c.execute_command("CLUSTER INFO"))
            if state.get("cluster_state") != "ok" or state.get("cluster_slots_ok") != "16384":
                return False
            if state.get("cluster_slots_pfail") != "0" or state.get("cluster_slots_fail") != "0":
                return False
            replication = c.info("replication")
            if replication["role"] == "slave":
                return bool(replication.get("master_link_status") == "up")
            return True

    def masters(self) -> list[EngineProcess]:
        """Live nodes that are masters now (a promoted replica included)."""
        out = []
        for node in self.alive():
            with contextlib.closing(self.client(node)) as c:
                if c.info("replication")["role"] == "master":
                    out.append(node)
        return out

    def describe(self) -> str:
        for node in self.alive():
            with contextlib.suppress(redis.RedisError), contextlib.closing(self.client(node)) as c:
                return str(c.execute_command("CLUSTER NODES").decode())
        return "no node answers"

    def flush(self) -> None:
        """Empty every master (replicas follow); the key counts then read 0 everywhere."""
        # One connection per master for both steps: flushes run before each model run and
        # each example, and asking every node its role twice, with a connection per
        # question, cost more than the flush.
        clients = [self.client(node) for node in self.masters()]
        try:
            for c in clients:
                c.flushall()
            # Let replicas apply it: tests count keys on masters, but a later failover must
            # not bring old keys back.
            for c in clients:
                c.execute_command("WAIT", 1, 5000)
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(directory: Path) -> ClusterProcess:
    """A started 3+3 cluster of the bundled Valkey (stopped again if it fails to form)."""
    binary = engine_binary("valkey")
    assert binary is not None, "the bundled Valkey server is missing"
    proc = ClusterProcess(binary, directory)
    try:
        proc.start()
    except BaseException:
        proc.stop()
        raise
    return proc
