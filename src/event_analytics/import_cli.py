"""``event-analytics import FILE…``: history into the archive, each event once by id.

Arguments are checked here, not by argparse, so that a mistake is one line on stderr
and exit status 2. The report (accepted / duplicate / rejected per reason, with the
first rejected lines named) goes to standard output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from event_analytics import import_read
from event_analytics.config import Settings


def _formats(args: argparse.Namespace) -> list[tuple[Path, str]] | str:
    if args.format is not None and args.format not in import_read.FORMATS:
        return f"--format must be one of {', '.join(import_read.FORMATS)}"
    out = []
    for path in args.files:
        fmt = args.format or import_read.detect(path)
        if fmt is None:
            return f"cannot tell the format of {path} from its name: give --format"
        if not path.is_file():
            return f"{path} is not a readable file"
        out.append((path, fmt))
    return out


def _import(args: argparse.Namespace, settings: Settings) -> int:
    planned = _formats(args)
    if isinstance(planned, str):
        print(f"event-analytics import: {planned}", file=sys.stderr)
        return 2

    async def run(settings: Settings) -> int:
        from event_analytics.importing import Importer
        from event_analytics.session import open_session

        async with open_session(settings) as (ingestor, _streams):
            importer = Importer(settings, ingestor)
            for path, fmt in planned:
                try:
                    with path.open("rb") as handle:
                        await importer.add(path.name, import_read.read(handle, fmt))
                except OSError as exc:
                    print(f"event-analytics import: {path}: {exc.strerror}", file=sys.stderr)
                    return 1
            await importer.flush()
            rebuilt = await importer.rebuild_days()
        report = importer.report
        print(
            f"accepted {report.accepted}, duplicate {report.duplicate}, "
            f"rejected {sum(report.rejected.values())}"
        )
        for code, n in sorted(report.rejected.items()):
            print(f"  rejected {code}: {n}")
        for example in report.examples:
            print(f"  {example}")
        if rebuilt is not None:
            days = f"{rebuilt.days} day" + ("s" if rebuilt.days != 1 else "")
            print(f"counters rebuilt for {days} ({rebuilt.events} events)")
        return 0

    from event_analytics.target import run_with_engine

    return run_with_engine(settings, run)


def add_commands(
    sub: argparse._SubParsersAction[Any],
    add_dirs: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = sub.add_parser("import", help="events of any age into the archive, once by event id")
    add_dirs(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument(
        "--format",
        help="ndjson (our records), segment (one message a line) or csv "
        "(default: from the name: .csv, .ndjson/.jsonl/.json)",
    )
    p.set_defaults(func=_import)
