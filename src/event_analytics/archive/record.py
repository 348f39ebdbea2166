"""The archived event record: the one codec every writer and reader of it calls. No I/O.

A record is the ``e`` field of a stream entry and, unchanged, one line of an hour file:
a JSON object with, in this order, ``event_id`` (36-character UUID text), ``user_id``,
``timestamp`` (RFC 3339 UTC with ``Z``), ``event_type``, ``payload`` (``page_url`` and
the flat extra properties) and ``received_at``. ``event_id`` comes first on purpose: a
line's id is read at a fixed byte offset (``ID_START``), without parsing the line.

Format version 1 (``FORMAT_VERSION``) is that layout, with no version field in the line.
A later version keeps ``event_id`` first and adds ``"v":N`` after it; ``decode`` then
reads both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

from event_analytics.timebucket import to_utc

FORMAT_VERSION = 1
ID_PREFIX = b'{"event_id":"'
ID_START = len(ID_PREFIX)  # byte offset of the event id in every line
ID_END = ID_START + 36
# The columns of an hour file as the analytics engine reads them (DuckDB types).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("timestamp", "TIMESTAMPTZ"),
    ("event_type", "VARCHAR"),
    ("payload", "JSON"),
    ("received_at", "TIMESTAMPTZ"),
)


class InvalidRecord(ValueError):
    """Bytes that are not an event record (never archived, skipped when read back)."""


@dataclass(slots=True)
class Record:
    """One archived event. Times are aware and in UTC.

    Not frozen: a frozen dataclass's __init__ costs ~1 us more, once per ingested event.
    """

    event_id: UUID
    user_id: str
    timestamp: datetime
    event_type: str
    payload: dict[str, Any]
    # When the service accepted it; None only in lines not written by the service.
    received_at: datetime | None = None


def encode(record: Record) -> bytes:
    """The record's bytes (one line without its newline), ``event_id`` first."""
    fields: dict[str, Any] = {
        "event_id": record.event_id,
        "user_id": record.user_id,
        "timestamp": _utc(record.timestamp),
        "event_type": record.event_type,
        "payload": record.payload,
    }
    if record.received_at is not None:
        fields["received_at"] = _utc(record.received_at)
    # orjson writes a UUID as its 36-character text and a UTC datetime as isoformat()
    # with "Z": the bytes of every version-1 record written so far.
    return orjson.dumps(fields, option=orjson.OPT_UTC_Z)


def decode(raw: bytes) -> Record:
    """The record in ``raw`` (a line, its newline allowed); InvalidRecord if it is none."""
    try:
        fields = orjson.loads(raw)
        event_id = fields["event_id"]
        if not isinstance(event_id, str) or len(event_id) != ID_END - ID_START:
            raise InvalidRecord("bad event_id")
        user_id, event_type = fields["user_id"], fields["event_type"]
        payload = fields.get("payload") or {}
        received_at = fields.get("received_at")
        if not (isinstance(user_id, str) and isinstance(event_type, str)):
            raise InvalidRecord("user_id and event_type must be strings")
        if not isinstance(payload, dict):
            raise InvalidRecord("payload must be an object")
        return Record(
            event_id=UUID(event_id),
            user_id=user_id,
            timestamp=to_utc(datetime.fromisoformat(fields["timestamp"])),
            event_type=event_type,
            payload=payload,
            received_at=to_utc(datetime.fromisoformat(received_at)) if received_at else None,
        )
    except InvalidRecord:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidRecord(f"unreadable event record: {exc}") from exc


def user_field(user_id: str) -> bytes:
    """The bytes of ``user_id``'s field in every archived line of that user, exactly as
    ``encode`` writes them (orjson's escaping: ``"`` and ``\\`` escaped, the rest as UTF-8).
    A line without these bytes holds no event of that user (``archive_line`` keeps that
    true for records laid out otherwise), so an erasure searches bytes before parsing."""
    return b'"user_id":' + orjson.dumps(user_id)


def archive_line(raw: bytes) -> tuple[Record, bytes]:
    """A streamed record and the bytes to archive for it: ``raw`` itself, or for a record
    laid out otherwise (not written by the service: its id not first, or its user id
    written in another way, spaced or escaped), the same fields re-encoded with
    ``event_id`` first, so that its id is at ``ID_START`` and its ``user_field`` in it."""
    record = decode(raw)
    if raw.startswith(ID_PREFIX) and user_field(record.user_id) in raw:
        return record, raw
    fields = orjson.loads(raw)
    return record, orjson.dumps({"event_id": fields["event_id"], **fields})


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is UTC else to_utc(ts)
