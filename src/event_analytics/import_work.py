"""The checking half of an import: a block of an import file read, validated and made
ready to write (archive lines, count calls), with nothing written. Pure of the engine
and of the archive, so it runs in worker processes (``EA_IMPORT_WORKERS``) while the
import process (``importing.py``) keeps what has to happen in one place and in order:
each id against the archive, the appends, the marks, the counting.

A block is a byte range of an NDJSON file (our records or Segment messages) that ends
at a line's end (``import_read.block_ranges``), or, for CSV, a run of rows read in the
import process. Its result (``Block``) holds the refusals (counted by reason, the first
``EXAMPLES`` with their lines) and the valid events grouped by UTC hour (``Group``), in
the file's order: so the report does not depend on how many workers there are.

Validation: plain events (our own records, nearly all) by ``model.plain_event``, the
others by the model (``validate_events``); the reasons are the model's. Then by time:
not more than the live future skew ahead, not before ``EARLIEST``, nor before the first
day the archive's retention keeps (``kept``); no other maximum age.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from event_analytics.archive.record import ID_END, ID_START, Record, encode
from event_analytics.config import Settings
from event_analytics.import_read import Item, numbered_lines, parse_line
from event_analytics.keys import Keys
from event_analytics.model import Event, PlainEvent, plain_event, validate_events
from event_analytics.store.prepared import Buckets, Caps, PreparedEvent
from event_analytics.store.scripts import Call
from event_analytics.store.writer import AGGREGATE_ABOVE, ingest_calls
from event_analytics.timebucket import iso_z, to_utc

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # a "sane year": older is a wrong clock
EXAMPLES = 20  # rejected lines named in the report
VALIDATE_BATCH = 1000  # events per pydantic call
COUNT_BATCH = 2000  # events per round trip of count calls
CSV_ROWS = 10_000  # CSV rows per block (read in the import process)


@dataclass(slots=True)
class Group:
    """A block's valid events of one UTC hour, in the file's order."""

    hour: int  # unix hours (seconds // 3600)
    lines: array[int]  # each one's line number within the block
    ids: list[str]  # each one's event id as the archive writes it
    data: bytes  # their archive lines, one after the other, each ending in a newline
    ends: array[int]  # where each one's line ends in ``data``
    users: set[str]  # the distinct users (the import checks them against erasures)
    # Counting all of them (a replay, as a rebuild counts), ready to send: the round
    # trips, each a list of script calls (``IngestWriter.send``).
    counts: list[list[Call]]

    def line(self, i: int) -> bytes:
        """The ``i``-th event's archive line, without its newline."""
        return self.data[self.ends[i - 1] if i else 0 : self.ends[i] - 1]


@dataclass(slots=True)
class Block:
    """What checking a block found: refusals, and the valid events by hour."""

    lines: int  # the block's lines (the next block's line numbers follow on)
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # line, code, message
    groups: list[Group] = field(default_factory=list)
    valid: int = 0


class Checker:
    """Checks blocks under one Settings (the names and expiry of the count calls)."""

    def __init__(self, settings: Settings) -> None:
        self.keys = Keys.from_settings(settings)
        self.buckets = Buckets(settings, self.keys)
        self.caps = Caps(settings.max_event_types, settings.max_pages_per_bucket)
        self.skew_s = settings.future_skew_s
        self.retention_days = settings.archive_retention_days

    def file_block(self, path: str, start: int, end: int, fmt: str, kept: datetime) -> Block:
        """The block of ``path`` from byte ``start`` to ``end`` (a line's end)."""
        items: list[Item] = []
        lines = 0
        with open(path, "rb") as handle:
            handle.seek(start)
            for number, raw in numbered_lines(handle, end - start):
                lines = number
                item = parse_line(number, raw, fmt)
                if item is not None:
                    items.append(item)
        return self.check(items, lines, kept)

    def check(self, items: Iterable[Item], lines: int, kept: datetime) -> Block:
        """Items (refusals already made, or event dicts) checked; ``lines``: how many
        lines they came from. ``kept``: the first day retention keeps (or EARLIEST)."""
        now = datetime.now(UTC)
        latest = now + timedelta(seconds=self.skew_s)
        refused: list[tuple[int, str, str]] = []
        pending: list[Item] = []
        for item in items:
            if item.event is None:
                refused.append((item.line, item.code, item.message))
            else:
                pending.append(item)
        by_hour: dict[int, list[tuple[int, PlainEvent, datetime]]] = {}
        for start in range(0, len(pending), VALIDATE_BATCH):
            for line, got, received in self._events(pending[start : start + VALIDATE_BATCH]):
                if isinstance(got, tuple):
                    refused.append((line, *got))
                    continue
                ts = got.timestamp
                if ts > latest:
                    ahead = f"more than {self.skew_s} s ahead of {iso_z(now)}"
                    refused.append((line, "timestamp_in_future", ahead))
                elif ts < EARLIEST:
                    refused.append((line, "timestamp_too_old", f"before {iso_z(EARLIEST)}"))
                elif ts < kept:
                    # The retention job would delete it, and may be deleting its day now.
                    refused.append((line, "past_retention",
                        f"before {iso_z(kept)}, the first day EA_ARCHIVE_RETENTION_DAYS="
                        f"{self.retention_days} keeps"))  # fmt: skip
                else:
                    hour = int(ts.timestamp()) // 3600
                    by_hour.setdefault(hour, []).append((line, got, received or now))
        block = Block(lines)
        refused.sort(key=lambda r: r[0])  # stable: a line is refused once
        block.rejected.update(code for _, code, _ in refused)
        block.examples = refused[:EXAMPLES]
        block.groups = [self._group(hour, events) for hour, events in by_hour.items()]
        block.valid = sum(len(g.ids) for g in block.groups)
        return block

    def _events(
        self, batch: list[Item]
    ) -> Iterator[tuple[int, PlainEvent | tuple[str, str], datetime | None]]:
        """Each item's event, or its refusal (code, message) by the model's rules, in
        order. Plain ones without pydantic (``plain_event``), the rest in one call."""
        plain = [plain_event(item.event) for item in batch]
        others = [item.event for item, got in zip(batch, plain, strict=True) if got is None]
        checked = iter(validate_events(others) if others else [])
        for item, got in zip(batch, plain, strict=True):
            if got is None:
                model = next(checked)
                if not isinstance(model, Event):
                    yield item.line, (model.code, f"{model.field}: {model.message}"), None
                    continue
                try:
                    got = PlainEvent.of(model)
                except OverflowError:
                    yield item.line, ("invalid_timestamp", "timestamp is out of range"), None
                    continue
            yield item.line, got, _received(item.received_at)

    def _group(self, hour: int, events: list[tuple[int, PlainEvent, datetime]]) -> Group:
        keys, buckets = self.keys, self.buckets
        records: list[bytes] = []
        ids: list[str] = []
        users: set[str] = set()
        prepared: list[PreparedEvent] = []
        ends = array("q")
        total = 0
        for _, event, received in events:
            raw = encode(Record(
                event.event_id, event.user_id, event.timestamp, event.event_type,
                event.payload, received,
            )) + b"\n"  # fmt: skip
            records.append(raw)
            total += len(raw)
            ends.append(total)
            ids.append(raw[ID_START:ID_END].decode())  # str(UUID) is Python code, 4x this
            users.add(event.user_id)
            shard = keys.shard_of(event.user_id)
            bucket = buckets.of(shard, event.event_type, event.timestamp)
            prepared.append(PreparedEvent(
                shard, bucket, event.event_id.bytes, event.user_id, event.page_url, b""
            ))  # fmt: skip
        counts = [
            ingest_calls(keys, self.caps, AGGREGATE_ABOVE, prepared[i : i + COUNT_BATCH], False)[1]
            for i in range(0, len(prepared), COUNT_BATCH)
        ]
        lines = array("q", [line for line, _, _ in events])
        return Group(hour, lines, ids, b"".join(records), ends, users, counts)


def _received(text: str | None) -> datetime | None:
    """An imported record's own ``received_at`` (None: unreadable or absent, then now)."""
    if not text:
        return None
    try:
        return to_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        return None
