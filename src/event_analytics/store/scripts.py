"""Run a Lua script once per shard in one round trip, on a single node and on a cluster.

redis-py's script object cannot be called in a cluster pipeline (it refuses: such a
pipeline cannot load scripts first), and a node that never saw the script (fresh,
restarted, or a replica just promoted by a failover) answers NOSCRIPT. So calls are
sent as plain EVALSHA, and a call that found no script, which therefore did not run,
is run again alone through the script object, which loads the script and retries.
Every call's keys share one hash tag, so the cluster client routes it by its first key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import exceptions as rx
from redis.commands.core import AsyncScript

Call = tuple[Sequence[Any], Sequence[Any]]  # (keys, args) of one script call


async def call_per_shard(client: Any, script: AsyncScript, calls: Sequence[Call]) -> list[Any]:
    """The replies of ``script`` for each (keys, args), in order; raises the first error.

    Callers wrap this in ``engine_errors()`` so outages become StorageUnavailable.
    """
    if len(calls) == 1:
        ((keys, args),) = calls
        return [await script(keys=keys, args=args)]
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    for n, reply in enumerate(replies):
        if isinstance(reply, rx.NoScriptError):
            keys, args = calls[n]
            replies[n] = await script(keys=keys, args=args)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
