"""Cardinality caps (issue 13), enforced by the ingest script on every engine.

EA_MAX_EVENT_TYPES: a new event type past the cap is refused (422 too_many_event_types),
nothing of the event is written and its id is not remembered; types already taken keep
working. EA_MAX_PAGES_PER_BUCKET: a page new to a full bucket counts into "(other)", the
bucket's totals stay exact, and every top-pages answer says pages were capped.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from event_analytics.ingest import Ingestor
from event_analytics.keys import OTHER_PAGE, Keys
from event_analytics.model import EVENT_ADAPTER
from event_analytics.store import IngestWriter, Outcome
from event_analytics.store.reads import Reads
from event_analytics.timebucket import Interval, floor
from tests.backends import Backend
from tests.helpers import event, run_store
from tests.inproc import InProcessService, in_process

REFUSED = Outcome.TOO_MANY_EVENT_TYPES
PATHS = pytest.mark.parametrize("aggregate_above", [1_000_000, 0], ids=["per_event", "per_key"])


def _run(db: Backend, prefix: str, work: Any, aggregate_above: int, **kw: Any) -> Any:
    return run_store(db, work, aggregate_above, key_prefix=prefix, **kw)


@PATHS
def test_a_new_event_type_past_the_cap_is_refused_and_leaves_nothing(
    db: Backend, aggregate_above: int
) -> None:
    now = datetime.now(UTC)
    # One user: one shard, so the cap of its shard decides. On the cluster most ids live
    # on another shard than the user: those go through claim, apply and (refused) unclaim.
    first = [event(user="u", event_type=t, ts=now) for t in ("a", "b", "a", "c")]
    mixed = [event(user="u", event_type=t, ts=now) for t in ("d", "a", "e", "d", "b")]

    async def work(ingestor: Ingestor, store: IngestWriter) -> list[list[Outcome]]:
        out = []
        for batch in (first, mixed):
            events = [ingestor.prepare(EVENT_ADAPTER.validate_python(e), now) for e in batch]
            out.append(await store.ingest(events))
        return out

    got = _run(db, "cap:", work, aggregate_above, max_event_types=3)
    assert got == [
        [Outcome.NEW] * 4,
        [REFUSED, Outcome.NEW, REFUSED, REFUSED, Outcome.NEW],
    ]
    names = db.scan("cap:*")
    assert not [n for n in names if "}:d:" in n or "}:e:" in n], names
    keys = Keys("cap:", db.shards)
    client = db.client(decode_responses=True)
    shard = keys.shard_of("u")
    streamed = "".join(f["e"] for _, f in client.xrange(keys.stream(shard)))
    assert all(e["event_id"] not in streamed for e in (mixed[0], mixed[2]))
    assert all(e["event_id"] in streamed for e in (*first, mixed[1], mixed[4]))
    assert client.smembers(keys.event_types(shard)) == {"a", "b", "c"}
    minute = floor(now, Interval.MINUTE)
    assert int(client.get(keys.count(shard, "a", Interval.MINUTE, minute)) or 0) == 3
    for s in range(keys.shards):  # every claim was applied or undone
        assert client.hlen(keys.outbox(s)) == 0
    # The refused ids were not remembered: with a higher cap the same events are new.
    again = [mixed[0], mixed[2], mixed[1]]

    async def resend(ingestor: Ingestor, store: IngestWriter) -> list[Outcome]:
        events = [ingestor.prepare(EVENT_ADAPTER.validate_python(e), now) for e in again]
        return await store.ingest(events)

    got_again = _run(db, "cap:", resend, aggregate_above, max_event_types=5)
    assert got_again == [Outcome.NEW, Outcome.NEW, Outcome.DUPLICATE]
    assert client.smembers(keys.event_types(shard)) == {"a", "b", "c", "d", "e"}
    client.close()


# -- pages per bucket: a model ---------------------------------------------------------
#
# Which pages a full bucket took depends on the order the events were applied in (on a
# cluster, events whose id lives on another shard are applied after the others), so the
# model checks what holds in every order: a page is taken at its first event or never,
# so a taken page has all its events, the rest all went to "(other)", and min(cap, pages)
# pages were taken.


def _check_bucket(
    got: dict[str, int], pairs: set[str], events: list[tuple[str, str]], cap: int
) -> int:
    """Asserts one bucket's pages zset and page-user pairs against its (user, page)
    events; returns the events counted into OTHER_PAGE."""
    sent = Counter(page for _, page in events)
    other = got.pop(OTHER_PAGE, 0)
    assert len(got) == min(cap, len(sent)), (got, sent)
    assert all(got[page] == sent[page] for page in got), (got, sent)  # taken: all its events
    assert other == sum(n for page, n in sent.items() if page not in got)
    assert sum(got.values()) + other == len(events)  # exact totals
    assert pairs == {f"{page if page in got else OTHER_PAGE}\0{user}" for user, page in events}
    return other


@settings(
    max_examples=12,
    deadline=None,
    # Bounded: no shrinking against a real engine (a failure prints its example).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    calls=st.lists(
        st.lists(st.tuples(st.sampled_from("uvw"), st.integers(0, 6)), min_size=1, max_size=12),
        min_size=1,
        max_size=4,
    ),
    cap=st.integers(1, 4),
    aggregate_above=st.sampled_from([0, 1_000_000]),
)
def test_pages_past_the_cap_count_into_other_and_totals_stay_exact(
    db: Backend, calls: list[list[tuple[str, int]]], cap: int, aggregate_above: int
) -> None:
    prefix = f"pc{uuid.uuid4().hex[:8]}:"
    minute = floor(datetime.now(UTC), Interval.MINUTE) - timedelta(minutes=2)
    pages = [[(u, f"https://example.com/{p}") for u, p in call] for call in calls]

    async def work(ingestor: Ingestor, store: IngestWriter) -> Any:
        for call in pages:
            events = [
                EVENT_ADAPTER.validate_python(event(user=u, url=url, ts=minute)) for u, url in call
            ]
            flags = await store.ingest([ingestor.prepare(e, datetime.now(UTC)) for e in events])
            assert all(f is Outcome.NEW for f in flags)
        reads = Reads(store)
        top = await reads.top_pages("page_view", Interval.MINUTE, [minute], 100)
        users = await reads.page_users("page_view", Interval.MINUTE, [minute], [OTHER_PAGE])
        return top, users[0]

    top, other_users = _run(db, prefix, work, aggregate_above, max_pages_per_bucket=cap)
    keys = Keys(prefix, db.shards)
    client = db.client(decode_responses=True)
    other = 0
    want_other_users: set[str] = set()
    try:
        for shard in range(keys.shards):
            mine = [e for call in pages for e in call if keys.shard_of(e[0]) == shard]
            for interval in (Interval.MINUTE, Interval.HOUR):
                start = floor(minute, interval)
                name = keys.pages(shard, "page_view", interval, start)
                got = {m: int(s) for m, s in client.zrange(name, 0, -1, withscores=True)}
                total = int(client.get(keys.count(shard, "page_view", interval, start)) or 0)
                assert total == len(mine)
                if interval is Interval.MINUTE:
                    name = keys.page_users(shard, "page_view", interval, start)
                    pairs = set(client.zrange(name, 0, -1))
                    kept = set(got)
                    other += _check_bucket(got, pairs, mine, cap)
                    want_other_users |= {u for u, page in mine if page not in kept}
                else:
                    # Hours keep pairs only with EA_UNIQUES=exact: the zset alone here.
                    expect = {f"{p if p in got else OTHER_PAGE}\0{u}" for u, p in mine}
                    _check_bucket(got, expect, mine, cap)
    finally:
        client.close()
    # The answer: real pages ranked, the capped part said and counted, nothing lost.
    assert OTHER_PAGE not in dict(top.pages)
    assert top.other == other
    assert sum(n for _, n in top.pages) + top.other == sum(len(call) for call in pages)
    assert other_users == len(want_other_users)


# -- over HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(engine: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """The app with small caps (3 event types per shard, 2 pages per bucket), in this
    process (tests.inproc): the caps are the ingest script's and the reads', no worker's."""
    chosen = engine.settings(
        data_dir=tmp_path_factory.mktemp(f"caps-{engine.kind}") / "data",
        key_prefix="capsvc:",
        max_event_types=3,
        max_pages_per_bucket=2,
        shards=1,
    )
    with in_process(chosen, engine.env | {"EA_KEY_PREFIX": "capsvc:", "EA_SHARDS": "1"}) as svc:
        yield svc


def test_caps_over_http(capped: InProcessService, db: Backend) -> None:
    url, http = capped.url, capped.http
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:6]
    # page_view is one of the three types.
    types = ["page_view", *(f"t{tag}{i}" for i in range(3))]
    pages = [f"https://example.com/{tag}/{p}" for p in "abcde"]
    first = [
        event(url=pages[0], ts=now),
        *(event(event_type=t, url=None, ts=now) for t in types[1:3]),
    ]
    r = http.post(f"{url}/events/batch", json={"events": first})
    assert [item["status"] for item in r.json()["results"]] == ["accepted"] * 3, r.text
    refused = event(event_type=types[3], url=None, ts=now)
    r = http.post(f"{url}/events", json=refused)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert [e["code"] for e in problem["errors"]] == ["too_many_event_types"]
    assert "EA_MAX_EVENT_TYPES" in problem["errors"][0]["message"]
    # An existing type keeps working, in the same batch as a refused one.
    mixed = [event(event_type=types[1], url=None, ts=now), refused]
    r = http.post(f"{url}/events/batch", json={"events": mixed})
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "rejected"], results
    assert results[1]["errors"][0]["code"] == "too_many_event_types"
    assert results[1]["errors"][0]["field"] == "events.1.event_type"

    # Pages: 2 per bucket, 5 pages sent in this minute (the engine was emptied).
    minute = floor(now, Interval.MINUTE)
    bodies = [event(user=f"u{i}", url=pages[i % 5], ts=now) for i in range(10)]
    r = http.post(f"{url}/events/batch", json={"events": bodies})
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 10, r.text
    frm, to = minute.isoformat(), (minute + timedelta(minutes=1)).isoformat()
    top = http.get(f"{url}/analytics/top-pages", params={"from": frm, "to": to, "limit": 10}).json()
    assert top["pages_capped"] is True and top["other_pages_count"] == 6, top
    assert [(p["page_url"], p["count"]) for p in top["pages"]] == [(pages[0], 3), (pages[1], 2)]
    series = http.get(
        f"{url}/analytics/timeseries", params={"from": frm, "to": to, "interval": "minute"}
    ).json()
    assert series["total"]["count"] == 11  # exact totals
    realtime = http.get(f"{url}/analytics/realtime").json()
    if floor(datetime.now(UTC), Interval.MINUTE) == minute:  # still in the window's minute
        assert realtime["pages_capped"] is True and realtime["other_pages_count"] == 6
    assert realtime["events"] == 11
