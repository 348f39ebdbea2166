"""``event-analytics export``: raw events of a range out of the archive, with a manifest.

Arguments are checked here, not by argparse, so that a mistake is one line on stderr
and exit status 2 (argparse would print its usage too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import orjson

from event_analytics.config import Settings
from event_analytics.timebucket import to_utc

# The exporter is imported by the command: every CLI call builds this module's parser.
if TYPE_CHECKING:
    from event_analytics.archive import export


class BadArgument(ValueError):
    """A command-line value that cannot be used (its message is the whole complaint)."""


def parse_time(name: str, text: str | None) -> datetime:
    """``--from``/``--to``: an ISO 8601 date or date-time, naive = UTC."""
    if not text:
        raise BadArgument(f"{name} is required (ISO 8601, e.g. 2026-11-27 or 2026-11-27T10:00Z)")
    try:
        return to_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):  # e.g. year 1 with an offset east of UTC
        raise BadArgument(
            f"{name} {text!r} is not an ISO 8601 date or date-time within years 1-9999 UTC, "
            "e.g. 2026-11-27T10:00Z"
        ) from None


def check_range(start: datetime, end: datetime) -> None:
    if end <= start:
        raise BadArgument("--to must be later than --from")


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from event_analytics.archive import export

    try:
        start, end = parse_time("--from", args.start), parse_time("--to", args.end)
        check_range(start, end)
        if args.format not in export.FORMATS:
            raise BadArgument(f"--format must be one of {', '.join(export.FORMATS)}")
        if args.format == "parquet" and args.output is None and sys.stdout.isatty():
            raise BadArgument("--format parquet is binary: give --output FILE or redirect stdout")
        if args.site is not None and not args.site.strip():
            raise BadArgument("--site must not be empty")
    except BadArgument as exc:
        print(f"event-analytics export: {exc}", file=sys.stderr)
        return 2
    fmt = cast(export.Format, args.format)
    manifest = export.Manifest(start, end, fmt, args.site)
    manifest_path: Path | None = args.manifest
    if manifest_path is None and args.output is not None:
        manifest_path = args.output.with_name(args.output.name + ".manifest.json")
    root = settings.archive_path
    try:
        if args.output is not None:
            _to_file(root, manifest, args.output)
        else:
            _to_stdout(root, manifest)
        if manifest_path is not None:
            _write_atomically(
                manifest_path,
                lambda out: out.write(orjson.dumps(manifest.as_dict(), option=orjson.OPT_INDENT_2)),
            )
    except OSError as exc:
        print(f"event-analytics export: {exc}", file=sys.stderr)
        return 1
    print(
        f"exported {manifest.events} events of {len(manifest.hours)} hours "
        f"({manifest.output_bytes:,} bytes, {fmt})"
        + (f"; manifest: {manifest_path}" if manifest_path else "")
        + (f"; {manifest.unreadable} unreadable lines skipped" if manifest.unreadable else ""),
        file=sys.stderr,
    )
    return 0


def _to_file(root: Path, manifest: export.Manifest, output: Path) -> None:
    """Written under a temporary name and renamed: a file by that name is a whole export."""
    from event_analytics.archive import export

    if manifest.format == "parquet":
        scratch = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            export.write_parquet(root, manifest, scratch)
            os.replace(scratch, output)
        finally:
            scratch.unlink(missing_ok=True)
        return

    def write(out: BinaryIO) -> None:
        for data in export.stream(root, manifest):
            out.write(data)

    _write_atomically(output, write)


def _to_stdout(root: Path, manifest: export.Manifest) -> None:
    from event_analytics.archive import export

    out = sys.stdout.buffer
    if manifest.format == "parquet":
        with tempfile.TemporaryDirectory(prefix="ea-export-") as scratch:
            target = Path(scratch) / "export.parquet"
            export.write_parquet(root, manifest, target)
            with target.open("rb") as handle:
                while block := handle.read(1 << 20):
                    out.write(block)
    else:
        for data in export.stream(root, manifest):
            out.write(data)
    with contextlib.suppress(BrokenPipeError):
        out.flush()


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with scratch.open("wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def add_commands(
    sub: argparse._SubParsersAction[Any],
    add_dirs: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("export", help="raw events of a range from the archive, with a manifest")
    add_dirs(p)
    p.add_argument("--from", dest="start", help="ISO date/time (UTC if naive), inclusive")
    p.add_argument("--to", dest="end", help="ISO date/time, exclusive")
    p.add_argument("--site", help="only events of this site (payload.domain or page host)")
    p.add_argument("--format", default="ndjson", help="ndjson (default), csv or parquet")
    p.add_argument("--output", type=Path, help="write to FILE (default: standard output)")
    p.add_argument("--manifest", type=Path, help="manifest path (default: FILE.manifest.json)")
    p.set_defaults(func=_export)
