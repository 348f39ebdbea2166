"""Raw events of a time range, out of the archive: NDJSON, CSV or Parquet, with a manifest.

The JSONL hour files are read one hour at a time, line by line, and written out in
chunks, so memory stays flat whatever the range (Parquet: DuckDB converts a scratch
NDJSON file under a memory limit). Closed and open hours alike: an open hour exports
what its file holds at that moment, and its manifest entry says exactly that much.

The manifest lets a receiver check it got everything: per hour, the events, an id
checksum any tool can recompute from the event ids alone (``ids_checksum``), and for
NDJSON and CSV the sha256 of that hour's bytes in the output; then totals and the
sha256 of the whole output.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from event_analytics.archive import files, record
from event_analytics.sites import site_of
from event_analytics.timebucket import Interval, floor, iso_z

Format = Literal["ndjson", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("ndjson", "csv", "parquet")
MANIFEST_VERSION = 1
CHUNK_BYTES = 64 * 1024
ENRICHED = ("referrer", "source", "utm_source", "utm_medium", "utm_campaign", "utm_term",
            "utm_content", "country", "device", "browser", "os")  # fmt: skip
# The CSV columns, in order: typed fields of the record and of its payload, then the whole
# payload as JSON text (so nothing is lost by flattening).
CSV_COLUMNS = ("event_id", "user_id", "timestamp", "received_at", "event_type", "site",
               "page_url", *ENRICHED, "payload")  # fmt: skip
_MASK = 2**64 - 1


def id_hash(event_id: str) -> int:
    """An event id's share of ``ids_checksum``: the first 8 bytes of md5(id), signed."""
    return int.from_bytes(hashlib.md5(event_id.encode()).digest()[:8], "big", signed=True)  # noqa: S324


def ids_checksum(total: int) -> str:
    """The checksum of a set of event ids from the sum of their ``id_hash``: the sum
    modulo 2^64 as 16 hex digits. Order-free, so it is summed as lines stream by, and
    PostgreSQL computes the same with ``sum(('x'||left(md5(id),16))::bit(64)::bigint)``."""
    return f"{total & _MASK:016x}"


@dataclass
class HourEntry:
    hour: datetime
    file: str
    events: int = 0
    ids_sum: int = 0
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"hour": iso_z(self.hour), "file": self.file, "events": self.events,
                "ids_checksum": ids_checksum(self.ids_sum), "sha256": self.sha256}  # fmt: skip


@dataclass
class Manifest:
    """What an export wrote, filled in while it streams."""

    start: datetime
    end: datetime
    format: Format
    site: str | None
    hours: list[HourEntry] = field(default_factory=list)
    unreadable: int = 0
    output_sha256: str | None = None
    output_bytes: int = 0

    @property
    def events(self) -> int:
        return sum(h.events for h in self.hours)

    def as_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": MANIFEST_VERSION,
            "from": iso_z(self.start),
            "to": iso_z(self.end),
            "format": self.format,
            "site": self.site,
            "columns": list(CSV_COLUMNS) if self.format != "ndjson" else None,
            "hours": [h.as_dict() for h in self.hours],
            "totals": {
                "hours": len(self.hours),
                "events": self.events,
                "ids_checksum": ids_checksum(sum(h.ids_sum for h in self.hours)),
                "unreadable_lines_skipped": self.unreadable,
                "bytes": self.output_bytes,
                "sha256": self.output_sha256,
            },
        }


def row(rec: record.Record) -> list[str | None]:
    """One event's values in CSV_COLUMNS order: text, None where absent (payload: JSON)."""
    payload = rec.payload
    values = [str(rec.event_id), rec.user_id, iso_z(rec.timestamp),
              iso_z(rec.received_at) if rec.received_at else None, rec.event_type,
              site_of(payload), _text(payload.get("page_url"))]  # fmt: skip
    values.extend(_text(payload.get(name)) for name in ENRICHED)
    values.append(orjson.dumps(payload).decode())
    return values


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _flat(rec: record.Record) -> bytes:
    """One event as a flat JSON object of CSV_COLUMNS (the Parquet conversion's input)."""
    fields: dict[str, Any] = dict(zip(CSV_COLUMNS, row(rec), strict=True))
    fields["payload"] = rec.payload
    return orjson.dumps(fields) + b"\n"


def stream(
    root: Path, manifest: Manifest, layout: Literal["ndjson", "csv", "flat"] | None = None
) -> Iterator[bytes]:
    """The export's bytes in chunks, hour by hour, filling in ``manifest`` as it goes.

    NDJSON lines are the archive's own lines (the record codec's encoding); a line the
    codec cannot read is skipped and counted, as rebuild and verify do.
    """
    fmt = layout or manifest.format
    whole = hashlib.sha256()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(CSV_COLUMNS)
        head = _take(text)
        whole.update(head)
        manifest.output_bytes += len(head)
        yield head
    start, end, site = manifest.start, manifest.end, manifest.site
    for found in files.list_files(root, floor(start, Interval.HOUR), end):
        entry = HourEntry(found.hour, found.relative)
        hour_hash = hashlib.sha256()
        chunk: list[bytes] = []
        size = 0
        for line in files.read_lines([found.path]):
            try:
                rec = record.decode(line)
            except record.InvalidRecord:
                manifest.unreadable += 1
                continue
            if not start <= rec.timestamp < end or (site and site_of(rec.payload) != site):
                continue
            if fmt == "csv":
                writer.writerow(["" if v is None else v for v in row(rec)])
                out = _take(text)
            elif fmt == "flat":
                out = _flat(rec)
            else:
                out = line
            entry.events += 1
            entry.ids_sum += id_hash(files.event_id_of(line))
            chunk.append(out)
            size += len(out)
            if size >= CHUNK_BYTES:
                yield _flush(chunk, hour_hash, whole, manifest)
                size = 0
        if chunk:
            yield _flush(chunk, hour_hash, whole, manifest)
        if entry.events:
            entry.sha256 = hour_hash.hexdigest()
            manifest.hours.append(entry)
    manifest.output_sha256 = whole.hexdigest()


def _take(text: io.StringIO) -> bytes:
    out = text.getvalue().encode()
    text.seek(0)
    text.truncate()
    return out


def _flush(chunk: list[bytes], hour: Any, whole: Any, manifest: Manifest) -> bytes:
    data = b"".join(chunk)
    chunk.clear()
    hour.update(data)
    whole.update(data)
    manifest.output_bytes += len(data)
    return data


def write_parquet(root: Path, manifest: Manifest, target: Path) -> None:
    """Write the export as Parquet to ``target``: the CSV columns, typed (times as
    TIMESTAMPTZ, ``payload`` as JSON), via a scratch NDJSON file beside ``target``."""
    import duckdb

    scratch = target.with_name(target.name + ".ndjson.tmp")
    try:
        with scratch.open("wb") as out:
            for data in stream(root, manifest, "flat"):
                out.write(data)
        for h in manifest.hours:
            h.sha256 = None  # those were the scratch file's bytes, not the receiver's
        columns = {name: "VARCHAR" for name in CSV_COLUMNS}
        columns |= {"timestamp": "TIMESTAMPTZ", "received_at": "TIMESTAMPTZ", "payload": "JSON"}
        connection = duckdb.connect(config={"threads": 1, "memory_limit": "256MB"})
        try:
            connection.execute("SET TimeZone = 'UTC'")
            # COPY's target cannot be a parameter: our own path, quoted.
            quoted = "'" + str(target).replace("'", "''") + "'"
            connection.execute(
                "COPY (SELECT * FROM read_json($path, format='newline_delimited', "  # noqa: S608
                "columns=$columns)) TO " + quoted + " (FORMAT parquet)",
                {"path": str(scratch), "columns": columns},
            )
        finally:
            connection.close()
    finally:
        scratch.unlink(missing_ok=True)
    whole = hashlib.sha256()
    with target.open("rb") as handle:
        while block := handle.read(1 << 20):
            whole.update(block)
    manifest.output_sha256 = whole.hexdigest()
    manifest.output_bytes = os.path.getsize(target)
