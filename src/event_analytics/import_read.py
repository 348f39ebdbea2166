"""Reading an import file: one event dict per line (or CSV row), or why a line is refused.

Three formats (``FORMATS``): ``ndjson`` — our own records, as ``export`` writes them and
the archive holds them; ``segment`` — Segment messages, one per line (a Segment S3
archive's layout, or what the SDKs send, one message a line); ``csv`` — a header row,
then one event a row, with the export's CSV columns (``archive/export.py``'s
``CSV_COLUMNS``). The file is untrusted: every problem is an ``Item`` with its line
number and a reason code, never an exception; nothing in it is used as a path.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from event_analytics.adapters import segment
from event_analytics.archive.export import CSV_COLUMNS, ENRICHED

FORMATS = ("ndjson", "segment", "csv")
MAX_LINE_BYTES = 1 << 20  # far above any event the service accepts (64 KiB)
# CSV columns that make an event; the others are optional (see docs/deploy.md).
CSV_REQUIRED = ("event_id", "user_id", "timestamp", "event_type")


@dataclass(slots=True)
class Item:
    """One line of the file: an event dict for the model, or a refusal (code, message)."""

    line: int
    event: dict[str, Any] | None = None
    code: str = ""
    message: str = ""
    received_at: str | None = None  # kept from our own records: export -> import is exact


def detect(path: Path) -> str | None:
    """The format a file name implies: ``.csv`` csv, ``.ndjson``/``.jsonl``/``.json`` ndjson."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    return None


def numbered_lines(
    handle: BinaryIO, limit: int | None = None
) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each line, blank ones too; None for a line over
    MAX_LINE_BYTES. ``limit``: stop after that many bytes (a block's range, which ends
    at a line's end)."""
    number = 0
    left = -1 if limit is None else limit
    while left:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        left -= len(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the long line
                raw = handle.readline(MAX_LINE_BYTES)
                left -= len(raw)
            yield number, None
            continue
        yield number, raw


def block_ranges(handle: BinaryIO, size: int) -> Iterator[tuple[int, int]]:
    """The file cut into blocks of about ``size`` bytes, each (start, end) ending at a
    line's end (or the file's): what one worker reads and checks (``import_work``).
    Reads only the line at each cut, in pieces of at most MAX_LINE_BYTES."""
    handle.seek(0, io.SEEK_END)
    total = handle.tell()
    start = 0
    while start < total:
        end = start + size
        if end >= total:
            end = total
        else:
            # From the byte before the cut (a cut right after a newline stays where it
            # is) to the end of the line it falls in.
            handle.seek(end - 1)
            while True:
                piece = handle.readline(MAX_LINE_BYTES)
                if not piece or piece.endswith(b"\n"):
                    break
            end = handle.tell()
        yield start, end
        start = end


def parse_line(number: int, raw: bytes | None, fmt: str) -> Item | None:
    """One line of an ``ndjson`` or ``segment`` file: its Item (None: a blank line)."""
    if raw is None:
        return Item(number, code="line_too_long", message=f"over {MAX_LINE_BYTES} bytes")
    if not raw.strip():
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Item(number, code="malformed_json", message=str(exc))
    if not isinstance(value, dict):
        return Item(number, code="invalid_line", message="a line must be one JSON object")
    return _segment(number, value) if fmt == "segment" else _native(number, value)


def read(handle: BinaryIO, fmt: str) -> Iterator[Item]:
    if fmt == "csv":
        yield from _csv(handle)
        return
    for number, raw in numbered_lines(handle):
        item = parse_line(number, raw, fmt)
        if item is not None:
            yield item


def _native(number: int, value: dict[str, Any]) -> Item:
    """Our own record: the event's fields (``received_at`` is the archive's, not sent).

    The record itself, not a copy of its event fields: the model ignores the others
    (``received_at``, a later version's ``v``), and copying was a tenth of an import's
    reading. Only a ``"payload": null`` is made ``{}``, as the archive reads it."""
    if value.get("payload", False) is None:
        value["payload"] = {}
    received = value.get("received_at")
    return Item(number, value, received_at=received if isinstance(received, str) else None)


def _segment(number: int, value: dict[str, Any]) -> Item:
    # An import keeps the message's own time: Segment's ``timestamp`` (already corrected
    # for the client's clock in an S3 archive). Without one there is no time to trust.
    if value.get("timestamp", value.get("originalTimestamp")) is None:
        return Item(number, code="missing_timestamp", message="a message needs a timestamp")
    message = {k: v for k, v in value.items() if k != "sentAt"}
    mapped = segment.map_message(number, message, datetime.now(UTC), None)
    if mapped.event is None:
        first = mapped.errors[0] if mapped.errors else None
        return Item(
            number,
            code=first.code if first else "invalid_message",
            message=first.message if first else "not a Segment message",
        )
    return Item(number, mapped.event)


def _csv(handle: BinaryIO) -> Iterator[Item]:
    text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline="")
    try:
        yield from _csv_rows(text)
    finally:
        text.detach()  # the caller closes its handle; a wrapper left behind would too, late


def _csv_rows(text: io.TextIOWrapper) -> Iterator[Item]:
    csv.field_size_limit(MAX_LINE_BYTES)
    rows = csv.reader(text)
    try:
        header = next(rows, None)
    except csv.Error as exc:
        yield Item(1, code="malformed_csv", message=str(exc))
        return
    if header is None:
        return
    header = [h.strip() for h in header]
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        yield Item(1, code="missing_columns", message=f"the header lacks {', '.join(missing)}")
        return
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Item(rows.line_num, code="malformed_csv", message=str(exc))
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield Item(
                rows.line_num,
                code="malformed_csv",
                message=f"{len(row)} fields where the header has {len(header)}",
            )
            continue
        yield _csv_row(rows.line_num, dict(zip(header, row, strict=True)))


def _csv_row(number: int, cells: dict[str, str]) -> Item:
    event: dict[str, Any] = {k: cells[k] for k in CSV_REQUIRED}
    if cells.get("payload"):
        try:
            payload = orjson.loads(cells["payload"])
        except orjson.JSONDecodeError as exc:
            return Item(number, code="invalid_payload", message=f"payload is not JSON: {exc}")
    else:  # no payload column: the typed columns are the payload
        payload = {k: cells[k] for k in ("page_url", *ENRICHED) if cells.get(k)}
    event["payload"] = payload
    return Item(number, event, received_at=cells.get("received_at") or None)


assert set(CSV_REQUIRED) <= set(CSV_COLUMNS)
