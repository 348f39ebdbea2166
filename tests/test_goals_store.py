"""Goals in the engine (valkey, redis, cluster): find-or-create under concurrency, one
slot, list per site, delete, and what a second site or a deleted goal leaves."""

from __future__ import annotations

import asyncio
import re

import pytest

from event_analytics.errors import InvalidInput, NotFound
from event_analytics.goals import new_goal
from event_analytics.store import IngestWriter
from event_analytics.store.goals import GoalStore
from tests.backends import Backend

PREFIX = "gl:"


def test_find_or_create_list_and_delete(db: Backend) -> None:
    async def work() -> None:
        store = IngestWriter.from_settings(db.settings(key_prefix=PREFIX))
        goals = GoalStore(store.client, store.keys)
        try:
            signup = new_goal("shop.example", "event", event_name="Signup")
            # Twenty concurrent creations of one goal: one goal, one id, one "created".
            made = await asyncio.gather(*(goals.put(signup) for _ in range(20)))
            assert len({g.id for g, _ in made}) == 1
            assert sum(created for _, created in made) == 1
            first = made[0][0]
            purchase, created = await goals.put(
                new_goal("shop.example", "event", event_name="Purchase", currency_code="EUR")
            )
            page, _ = await goals.put(new_goal("shop.example", "page", page_path="/thanks/**"))
            other, _ = await goals.put(new_goal("other.example", "event", event_name="Signup"))
            assert created and len({first.id, purchase.id, page.id, other.id}) == 4
            assert await goals.list("shop.example") == [first, purchase, page]
            assert await goals.list("other.example") == [other]
            assert await goals.list("none.example") == []
            # The same goal with another currency is not silently the old one.
            with pytest.raises(InvalidInput) as caught:
                await goals.put(
                    new_goal("shop.example", "event", event_name="Purchase", currency_code="USD")
                )
            assert [(e.code, e.field) for e in caught.value.errors] == [("goal_exists", "currency")]
            # Another site's id is not found through this site.
            with pytest.raises(NotFound):
                await goals.delete("shop.example", other.id)
            assert await goals.delete("shop.example", first.id) == first
            with pytest.raises(NotFound):
                await goals.delete("shop.example", first.id)
            assert await goals.list("shop.example") == [purchase, page]
            # Made again after its deletion: a new id (ids are never reused).
            again, created = await goals.put(signup)
            assert created and again.id > other.id
        finally:
            await store.close()

    asyncio.run(work())
    # All goal keys share one hash tag (one slot on the cluster), none carries a site.
    keys = db.scan(f"{PREFIX}*")
    assert keys and all(re.fullmatch(r"gl:\{goals\}:goal(s|-index|-ids)", k) for k in keys), keys


def test_goals_are_bounded(db: Backend) -> None:
    async def work() -> None:
        store = IngestWriter.from_settings(db.settings(key_prefix=PREFIX))
        goals = GoalStore(store.client, store.keys, max_goals=3)
        try:
            made = [await goals.put(new_goal("a.example", "event", event_name=f"E{i}"))
                    for i in range(3)]  # fmt: skip
            with pytest.raises(InvalidInput) as caught:
                await goals.put(new_goal("b.example", "event", event_name="E"))
            assert caught.value.errors[0].code == "too_many_goals"
            # An existing goal is still found at the bound, and a deletion makes room.
            assert await goals.put(made[0][0]) == (made[0][0], False)
            await goals.delete("a.example", made[0][0].id)
            assert (await goals.put(new_goal("b.example", "event", event_name="E")))[1]
        finally:
            await store.close()

    asyncio.run(work())
