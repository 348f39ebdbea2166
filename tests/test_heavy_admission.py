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
