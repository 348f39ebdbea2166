"""Pure types of counter reads: shared by the planner (counter_queries.py) and
store/reads.py."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class UserSource(StrEnum):
    """Which structure a series reads unique users from (see store/figures.lua)."""

    SETS = "set"
    HLL = "hll"
    PAGE = "page"
    PAGE_HLL = "page_hll"

    @property
    def exact(self) -> bool:
        return self in (UserSource.SETS, UserSource.PAGE)


@dataclass(frozen=True, slots=True)
class Series:
    """(count, unique users) per group of buckets, and the distinct users of all groups."""

    points: list[tuple[int, int]]
    total_users: int
