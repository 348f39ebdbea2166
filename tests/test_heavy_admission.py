"""The heavy-read lanes' admission (api/heavy.py), on its own event loop: a read past the
slots waits up to its bound and takes the first slot freed, one client holds at most
half of a lane, and a read whose client left gives its slot back."""

from __future__ import annotations

import asyncio

import pytest

from event_analytics.api.heavy import ArchiveBusy, HeavyReads
from event_analytics.errors import ReadsBusy


async def _hold(lane: HeavyReads, client: str, release: asyncio.Event) -> None:
    async with lane.slot(client):
        await release.wait()


def test_a_client_holds_at_most_half_and_others_take_the_rest() -> None:
    async def scenario() -> None:
        lane = HeavyReads(4, 0, "counter")
        release = asyncio.Event()
        held = [asyncio.create_task(_hold(lane, "a", release)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ReadsBusy, match="this client already runs 2 of the 4"):
            async with lane.slot("a"):
                pass
        others = [asyncio.create_task(_hold(lane, "b", release)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ReadsBusy, match="4 heavy reads are running"):
            async with lane.slot("c"):
                pass
        release.set()
        await asyncio.gather(*held, *others)
        async with lane.slot("a"), lane.slot("a"):
            pass  # all free again

    asyncio.run(scenario())


def test_a_waiting_read_takes_the_slot_freed_within_its_bound() -> None:
    async def scenario() -> None:
        lane = HeavyReads(1, 30, "archive")
        release = asyncio.Event()
        first = asyncio.create_task(_hold(lane, "a", release))
        await asyncio.sleep(0)
        entered = asyncio.Event()

        async def second() -> None:
            async with lane.slot("b"):
                entered.set()

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0)
        assert not entered.is_set()
        release.set()
        await asyncio.wait_for(asyncio.gather(first, waiting), 30)
        assert entered.is_set()

    asyncio.run(scenario())


def test_the_archive_lane_refuses_as_analytics_busy_and_a_cancelled_read_frees_its_slot() -> None:
    async def scenario() -> None:
        lane = HeavyReads(1, 0, "archive")
        holder = asyncio.create_task(_hold(lane, "a", asyncio.Event()))
        await asyncio.sleep(0)
        with pytest.raises(ArchiveBusy) as busy:
            async with lane.slot("b"):
                pass
        assert busy.value.slug == "analytics-busy" and busy.value.retry_after_s == 1
        holder.cancel()  # its client went away
        with pytest.raises(asyncio.CancelledError):
            await holder
        async with lane.slot("b"):
            pass

    asyncio.run(scenario())


def test_reads_are_admitted_by_cost_and_an_oversized_one_runs_alone() -> None:
    """A budget of 100: reads of 60 and 40 fill it (two of four slots), a third of 1 is
    refused for the budget (not the slots); one of 500 is charged the whole budget: it
    waits for an empty lane, then holds it alone."""

    async def scenario() -> None:
        lane = HeavyReads(4, 0, "counter", budget=100)
        release = asyncio.Event()

        async def hold(client: str, cost: int) -> None:
            async with lane.slot(client, cost):
                await release.wait()

        held = [asyncio.create_task(hold("a", 60)), asyncio.create_task(hold("b", 40))]
        await asyncio.sleep(0)
        with pytest.raises(ReadsBusy, match=r"cost 100 of the 100 entries .* needs 1 more"):
            async with lane.slot("c", 1):
                pass
        with pytest.raises(ReadsBusy, match="needs 100 more"):
            async with lane.slot("c", 500):
                pass
        release.set()
        await asyncio.gather(*held)
        async with lane.slot("c", 500):
            assert lane.charge(500) == 100
            with pytest.raises(ReadsBusy, match="needs 1 more"):
                async with lane.slot("d", 1):
                    pass
        async with lane.slot("d", 1), lane.slot("e", 99):
            pass  # all the budget free again

    asyncio.run(scenario())


def test_a_read_refused_on_a_full_lane_is_never_sized() -> None:
    """The sizing (engine commands) runs only once the lane has room for the read: on a
    full lane the refusal comes first; with room, the sized cost is what is charged."""

    async def scenario() -> None:
        lane = HeavyReads(1, 0, "counter", budget=100)
        calls: list[int] = []

        async def size() -> int:
            calls.append(1)
            return 70

        holder = asyncio.create_task(_hold(lane, "a", release := asyncio.Event()))
        await asyncio.sleep(0)
        with pytest.raises(ReadsBusy, match="1 heavy reads are running"):
            async with lane.slot("b", 10, size):
                pass
        assert calls == []
        release.set()
        await holder
        async with lane.slot("b", 10, size):
            assert calls == [1] and lane.charge(80) == 80
            with pytest.raises(ReadsBusy):
                async with lane.slot("c", 0):
                    pass

    asyncio.run(scenario())
