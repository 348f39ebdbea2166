"""Goals in the engine: find-or-create, list, delete (goals.py has the model and rules).

Three keys under one hash tag (``Keys.goals``, ``goal_index``, ``goal_ids``): the goals
by id as JSON, an index from identity (site, kind, name or pattern) to id, and the id
counter. They are ordinary keys under the prefix, so they live in the AOF, survive a
restart, and are in every backup (backup.py copies every key of the prefix). Goals are
few (tens per site): a site's list is read from the one hash and filtered here, and
``MAX_GOALS`` bounds them all (the hash is read whole).
"""

from __future__ import annotations

import orjson

from event_analytics.errors import FieldError, InvalidInput, NotFound
from event_analytics.goals import Goal
from event_analytics.keys import Keys
from event_analytics.store.connect import Client
from event_analytics.store.errors import engine_errors
from event_analytics.store.scripts import Lua, register


def _decode(goal_id: bytes | str | int, raw: bytes | str) -> Goal:
    return Goal.from_dict({**orjson.loads(raw), "id": int(goal_id)})


def _encode(goal: Goal) -> bytes:
    fields = goal.as_dict()
    del fields["id"]  # the hash field holds it
    return orjson.dumps(fields)


MAX_GOALS = 10_000


class GoalStore:
    def __init__(self, client: Client, keys: Keys, max_goals: int = MAX_GOALS) -> None:
        self.client = client
        self.keys = keys
        self.max_goals = max_goals
        self._put = register(client, Lua.GOAL_PUT)
        self._delete = register(client, Lua.GOAL_DELETE)

    async def put(self, goal: Goal) -> tuple[Goal, bool]:
        """The site's goal of that identity, created from ``goal`` (its id ignored) when
        there is none; and whether it was created. The same goal with another currency is
        InvalidInput naming ``currency``: a goal's currency is part of what it sums."""
        keys = [self.keys.goals(), self.keys.goal_index(), self.keys.goal_ids()]
        async with engine_errors(write=True):
            reply = await self._put(
                keys=keys, args=[goal.identity(), _encode(goal), self.max_goals]
            )
        if reply[0] == -1:
            raise InvalidInput(
                [
                    FieldError(
                        "too_many_goals",
                        "goal_type",
                        f"the service holds {self.max_goals} goals, its most: delete some first",
                    )
                ]
            )
        created, goal_id, raw = reply
        stored = _decode(goal_id, raw)
        if not created and stored.currency != goal.currency:
            have = stored.currency or "no currency"
            raise InvalidInput(
                [
                    FieldError(
                        "goal_exists",
                        "currency",
                        f"goal {stored.id} ({stored.display_name}) exists with {have}: "
                        "delete it first to change its currency",
                    )
                ]
            )
        return stored, bool(created)

    async def list(self, site: str) -> list[Goal]:
        """The site's goals, by id (oldest first)."""
        async with engine_errors():
            every = await self.client.hgetall(self.keys.goals())
        goals = (_decode(goal_id, raw) for goal_id, raw in every.items())
        return sorted((g for g in goals if g.site == site), key=lambda g: g.id)

    async def get(self, site: str, goal_id: int) -> Goal:
        """The site's goal ``goal_id``; NotFound when there is none (or another site's)."""
        async with engine_errors():
            raw = await self.client.hget(self.keys.goals(), str(goal_id))
        goal = None if raw is None else _decode(goal_id, raw)
        if goal is None or goal.site != site:
            raise NotFound(f"site {site} has no goal {goal_id}")
        return goal

    async def delete(self, site: str, goal_id: int) -> Goal:
        """Delete the site's goal ``goal_id`` and return it; NotFound when there is none."""
        goal = await self.get(site, goal_id)
        keys = [self.keys.goals(), self.keys.goal_index()]
        async with engine_errors(write=True):
            gone = await self._delete(keys=keys, args=[str(goal.id), goal.identity()])
        if not gone:  # deleted meanwhile by another request
            raise NotFound(f"site {site} has no goal {goal_id}")
        return goal
