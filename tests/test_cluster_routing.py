"""How the service's cluster client routes a script call (store/cluster.py HashTagged):
by its first key alone, the engine refusing keys of several slots, on the session's
real 3+3 cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import exceptions as rx

from event_analytics.config import Settings
from event_analytics.store.cluster import connect_cluster
from tests.cluster import ClusterProcess

SCRIPT = "return #KEYS"


def counting_keyslot(client: Any) -> list[object]:
    """Every key the client hashes from now on."""
    hashed: list[object] = []
    original = client.keyslot

    def keyslot(key: object) -> int:
        hashed.append(key)
        return int(original(key))

    client.keyslot = keyslot
    return hashed


@pytest.mark.parametrize("replicas", [False, True], ids=["masters", "replicas"])
def test_a_script_call_is_routed_by_its_first_key_and_cross_slot_keys_are_refused(
    cluster: ClusterProcess, replicas: bool
) -> None:
    settings = Settings(redis_cluster_url=cluster.url, redis_url=None)
    # One shard's keys: one hash tag, as every call the service makes. Verify names
    # 2 keys a minute for each shard, 2,880 a day.
    keys = [f"routing:{{7}}:m:{n}" for n in range(2_880)]

    async def run() -> None:
        client = connect_cluster(settings, cluster.url, replicas=replicas)
        try:
            sha = await client.script_load(SCRIPT)  # on every master
            if replicas:
                await client.execute_command("EVAL_RO", SCRIPT, 1, "routing:{7}:warm")
            command = "EVALSHA_RO" if replicas else "EVALSHA"
            hashed = counting_keyslot(client)
            assert await client.execute_command(command, sha, len(keys), *keys) == len(keys)
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(3):
                    pipe.execute_command(command, sha, len(keys), *keys)
                assert await pipe.execute() == [len(keys)] * 3
            # redis-py alone hashed each of them (2,880 per call) to check their slot.
            assert len(hashed) <= 4, len(hashed)
            # The engine still makes that check: keys of two slots are refused.
            with pytest.raises(rx.ResponseError, match="same slot"):
                await client.execute_command(command, sha, 2, "routing:{7}:a", "routing:{8}:a")
        finally:
            await client.aclose()

    asyncio.run(run())
