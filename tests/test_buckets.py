"""``Buckets.of``: the bucket of a UTC timestamp, from its cache or made, names the
timestamp's own UTC minute, hour and day and expires as the settings say, whatever
timestamps came before it (the cache is looked up by the epoch minute, named once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from event_analytics.config import Settings
from event_analytics.keys import Keys
from event_analytics.store.prepared import Buckets
from event_analytics.timebucket import to_utc

SETTINGS = Settings(redis_url="redis://127.0.0.1:1")
KEYS = Keys("ea:", 4)

_offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_instants = st.datetimes(
    min_value=datetime(2000, 1, 2), max_value=datetime(2099, 12, 30), timezones=_offsets
).map(to_utc)
# Near neighbours too: the same minute, the edges of minutes, hours and days.
_near = st.tuples(_instants, st.lists(st.integers(-90_000, 90_000), max_size=6)).map(
    lambda t: [t[0], *(t[0] + timedelta(microseconds=d * 1000) for d in t[1])]
)


def expected(shard: int, event_type: str, ts: datetime) -> tuple[tuple[str, ...], tuple[int, ...]]:
    iso = ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    epoch = int(ts.timestamp() // 1)
    minute, hour, day = (epoch - epoch % n + n for n in (60, 3600, 86400))
    s = SETTINGS
    return (
        KEYS.stems(shard, event_type, iso, iso[:13], iso[:10]),
        (minute + s.minute_retention_s, hour + s.hour_retention_s, day + s.day_retention_s),
    )


@settings(max_examples=300)
@given(st.lists(st.tuples(_near, st.integers(0, 3), st.sampled_from(["page_view", "signup"]))))
def test_each_bucket_is_its_timestamps_own(
    runs: list[tuple[list[datetime], int, str]],
) -> None:
    buckets = Buckets(SETTINGS, KEYS)  # one cache for the whole sequence
    for stamps, shard, event_type in runs:
        for ts in stamps:
            got = buckets.of(shard, event_type, ts)
            assert (got.stems, got.expire_at) == expected(shard, event_type, ts), ts
            assert got.event_type == event_type
