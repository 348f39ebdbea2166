"""Calendar periods of retention and time dimensions, as integer indexes (UTC).

A period is numbered from the epoch, so "k periods after" is integer arithmetic in SQL
and in Python alike: hours and days by division, ISO weeks from the first Monday after
the epoch, months as ``year * 12 + month - 1``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONDAY_S = 4 * 86400  # 1970-01-05 was a Monday
_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400}


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"

    def number(self, ts: datetime) -> int:
        """The number of the period holding ``ts`` (UTC)."""
        if self is Period.MONTH:
            return ts.year * 12 + ts.month - 1
        seconds = (ts - _EPOCH) // timedelta(microseconds=1) // 1_000_000
        offset = _MONDAY_S if self is Period.WEEK else 0
        return (seconds - offset) // _SECONDS[self]

    def start(self, index: int) -> datetime:
        if self is Period.MONTH:
            return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
        offset = _MONDAY_S if self is Period.WEEK else 0
        return _EPOCH + timedelta(seconds=index * _SECONDS[self] + offset)

    def starts(self, start: datetime, end: datetime) -> list[int]:
        """Indexes of the periods whose start lies in ``[start, end)``."""
        first = self.number(start)
        if self.start(first) < start:
            first += 1
        out = []
        i = first
        while self.start(i) < end:
            out.append(i)
            i += 1
        return out

    def sql(self, column: str) -> str:
        """The SQL of ``number`` for a TIMESTAMPTZ column (``column`` is one of ours)."""
        if self is Period.MONTH:
            return f"(year({column}) * 12 + month({column}) - 1)"
        offset = _MONDAY_S if self is Period.WEEK else 0
        return f"CAST(floor((epoch({column}) - {offset}) / {_SECONDS[self]}) AS BIGINT)"
