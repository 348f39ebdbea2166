"""The Lua scripts (``store/*.lua``, one registry) and how to run one per shard.

Every script is a file beside this module, named by a ``Lua`` member: one way to find,
read and register them.

``call_per_shard`` runs one in one round trip per shard, on a single node and on a
cluster. redis-py's script object cannot be called in a cluster pipeline (it refuses:
such a pipeline cannot load scripts first), and a node that never saw the script (fresh,
restarted, or a replica just promoted by a failover) answers NOSCRIPT. So calls are
sent as plain EVALSHA, and a call that found no script, which therefore did not run,
is run again alone through the script object, which loads the script and retries.
Every call's keys share one hash tag, so the cluster client routes it by its first key.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from enum import StrEnum
from importlib import resources
from typing import Any

from redis import exceptions as rx
from redis.commands.core import AsyncScript

Call = tuple[Sequence[Any], Sequence[Any]]  # (keys, args) of one script call


class Lua(StrEnum):
    """Every script the service runs: ``store/<value>.lua`` (each file says its contract)."""

    INGEST = "ingest"
    CLAIM = "claim"
    UNCLAIM = "unclaim"
    FIGURES = "figures"
    MEMBERS = "members"
    RANKED = "ranked"
    LEASE_RENEW = "lease_renew"
    LEASE_RELEASE = "lease_release"
    STREAM_ACK = "stream_ack"
    DEAD_LETTER = "dead_letter"
    GOAL_PUT = "goal_put"
    GOAL_DELETE = "goal_delete"
    CLEAR_DAY = "clear_day"
    FORGET_SUBMIT = "forget_submit"


@functools.cache
def source(script: Lua) -> str:
    """The text of ``script`` (read once from the package)."""
    return resources.files(__package__).joinpath(f"{script.value}.lua").read_text()


def register(client: Any, script: Lua) -> AsyncScript:
    """``script`` bound to ``client``: callable, loads itself on first use and on NOSCRIPT."""
    return client.register_script(source(script))  # type: ignore[no-any-return]


async def call_per_shard(
    client: Any, script: AsyncScript, calls: Sequence[Call], *, read_only: bool = False
) -> list[Any]:
    """The replies of ``script`` for each (keys, args), in order; raises the first error.

    ``read_only``: sent as EVALSHA_RO (Redis 7+), which a cluster client configured to
    read from replicas sends to a replica; a replica that lacks the script (SCRIPT LOAD
    goes to masters only) gets EVAL_RO with its text, which also caches it there.
    Callers wrap this in ``engine_errors()`` so outages become StorageUnavailable.
    """
    if len(calls) == 1 and not read_only:
        ((keys, args),) = calls
        return [await script(keys=keys, args=args)]
    command = "EVALSHA_RO" if read_only else "EVALSHA"
    async with client.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.execute_command(command, script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    for n, reply in enumerate(replies):
        if isinstance(reply, rx.NoScriptError):
            keys, args = calls[n]
            if read_only:
                text = script.script
                replies[n] = await client.execute_command("EVAL_RO", text, len(keys), *keys, *args)
            else:
                replies[n] = await script(keys=keys, args=args)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
